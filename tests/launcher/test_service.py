"""Service launches on CPU: groups restart alone, hung and exited-0 workers are failures,
exhausted restarts end the launch, and events come in order (real processes, gloo)."""

from __future__ import annotations

import os
import signal
import time

import psutil
import pytest

pytestmark = pytest.mark.timeout(120)


def ready_of(group: int, attempt: int):
    return lambda e: e.kind == "ready" and e.group == group and e.attempt == attempt


def pids(event) -> dict[int, int]:
    return {rank: payload["pid"] for rank, payload in event.payloads.items()}


def test_sigkill_of_a_worker_restarts_its_group_only(service):
    run = service.start(service.config(dp=2, tp=2), max_restarts=2)
    ready = {}
    for _ in range(2):
        e = run.until(lambda e: e.kind == "ready")
        ready[e.group] = e
    # each group is its own torch world: world 2, all-reduce over its own ranks only
    assert {r: (p["world"], p["sum"]) for r, p in ready[0].payloads.items()} == {
        0: (2, 3.0), 1: (2, 3.0)}
    assert {r: (p["world"], p["sum"]) for r, p in ready[1].payloads.items()} == {
        2: (2, 7.0), 3: (2, 7.0)}
    group0 = pids(ready[0])
    before = {pid: psutil.Process(pid).create_time() for pid in group0.values()}

    os.kill(pids(ready[1])[3], signal.SIGKILL)
    failed = run.until(lambda e: e.kind == "failed")
    assert (failed.group, failed.rank, failed.cause, failed.signal) == (
        1, 3, "signal", signal.SIGKILL)
    again = run.until(ready_of(1, 1))
    assert set(again.payloads) == {2, 3}
    assert set(pids(again).values()).isdisjoint(pids(ready[1]).values())
    service.assert_gone(pids(ready[1]).values())
    # group 0 never stopped: same processes, no event since it was ready
    assert {pid: psutil.Process(pid).create_time() for pid in group0.values()} == before
    assert run.history(0) == [("starting", 0), ("ready", 0)]
    assert run.history(1) == [("starting", 0), ("ready", 0), ("failed", 0),
                              ("restarting", 1), ("starting", 1), ("ready", 1)]

    result = run.stop()
    assert result.exit_code == 0 and result.restarts == 1
    assert run.history(0)[-1] == ("stopped", 0) and run.history(1)[-1] == ("stopped", 1)
    service.assert_gone([*group0.values(), *pids(again).values()])


def test_a_hung_worker_is_detected_within_the_deadline_and_restarted(service):
    # 3 s: a healthy rank starved of CPU on a loaded 2-core host must not miss it
    run = service.start(service.config(dp=2), heartbeat_timeout_s=3.0)
    first = {}
    for _ in range(2):
        e = run.until(lambda e: e.kind == "ready")
        first[e.group] = e
    hung_pid = pids(first[1])[1]
    os.kill(hung_pid, signal.SIGSTOP)  # a stopped process sends no heartbeat
    stopped_at = time.monotonic()
    failed = run.until(lambda e: e.kind == "failed", timeout=10)
    detected = time.monotonic() - stopped_at
    assert (failed.group, failed.rank, failed.cause) == (1, 1, "hung")
    # not before the deadline less the last beat's age (at most one interval: min(1, 3 / 5)
    # = 0.6 s, launcher/service.py) and a poll, and soon after it
    assert 3.0 - 0.6 - 0.1 <= detected < 3.0 + 2.0, f"hung worker detected after {detected:.1f}s"
    again = run.until(ready_of(1, 1))
    service.assert_gone([hung_pid])
    assert pids(again)[1] != hung_pid
    assert service.running(pids(first[0])[0])
    assert run.history(0) == [("starting", 0), ("ready", 0)]  # heartbeats kept it alive
    assert run.history(1) == [("starting", 0), ("ready", 0), ("failed", 0),
                              ("restarting", 1), ("starting", 1), ("ready", 1)]


def test_a_worker_exiting_0_is_a_failure(service):
    run = service.start(service.config(dp=2), env={"SERVICE_EXIT0_RANK": "0"})
    failed = run.until(lambda e: e.kind == "failed")
    assert (failed.group, failed.rank, failed.cause, failed.exit_code) == (0, 0, "exited-0", 0)
    assert "leaving with 0" in failed.log_tail
    run.until(ready_of(0, 1))
    assert run.stop().exit_code == 0


def test_exhausted_restarts_end_the_launch_naming_group_and_rank(service):
    run = service.start(service.config(dp=2), env={"SERVICE_FAIL_ALWAYS_RANK": "1"},
                  max_restarts=1)
    result = run.launch.wait(timeout=90)
    events = run.rest()
    assert result.exit_code == 1
    assert "group 1" in result.cause and "rank 1 exited with code 3" in result.cause
    assert run.history(1) == [("starting", 0), ("ready", 0), ("failed", 0),
                              ("restarting", 1), ("starting", 1), ("ready", 1),
                              ("failed", 1), ("stopped", 1)]
    final = [e for e in events if e.group == 1][-1]
    assert (final.rank, final.cause, final.exit_code) == (1, "exit", 3)
    assert run.history(0)[-1][0] == "stopped"  # the healthy group is stopped with the launch
    every_pid = {p["pid"] for e in events if e.kind == "ready" for p in e.payloads.values()}
    service.assert_gone(every_pid)
    assert [p for p in psutil.Process().children(recursive=True) if p.is_running()
            and p.status() != psutil.STATUS_ZOMBIE] == []


def test_events_of_a_never_ready_group_and_ready_timeout(service):
    run = service.start(service.config(dp=2), env={"SERVICE_NEVER_READY_RANK": "1"},
                  ready_timeout_s=6.0, max_restarts=0)  # group 0 gets ready well within
    result = run.launch.wait(timeout=60)
    run.rest()
    assert result.exit_code == 1
    assert run.history(1) == [("starting", 0), ("failed", 0), ("stopped", 0)]
    failed = next(e for e in run.events if e.kind == "failed")
    assert (failed.rank, failed.cause) == (1, "hung")
    assert run.history(0) == [("starting", 0), ("ready", 0), ("stopped", 0)]


def test_a_dead_zygote_restarts_every_group_from_a_new_zygote(service):
    run = service.start(service.config(dp=2))
    first = {}
    for _ in range(2):
        e = run.until(lambda e: e.kind == "ready")
        first[e.group] = e
    old_zygote = run.launch.zygote.pid
    os.kill(old_zygote, signal.SIGKILL)  # its forked workers die with it
    again = {}
    for _ in range(2):
        e = run.until(lambda e: e.kind == "ready" and e.attempt == 1, timeout=120)
        again[e.group] = e
    new_zygote = run.launch.zygote.pid
    assert new_zygote != old_zygote
    for group in (0, 1):
        failed = next(e for e in run.events if e.kind == "failed" and e.group == group)
        assert (failed.rank, failed.cause, failed.signal) == (group, "signal", signal.SIGKILL)
        service.assert_gone(pids(first[group]).values())
        assert psutil.Process(pids(again[group])[group]).ppid() == new_zygote  # forked again
    service.assert_gone([old_zygote])
    assert f"a new zygote (pid {new_zygote}) is ready" in run.err.getvalue()
