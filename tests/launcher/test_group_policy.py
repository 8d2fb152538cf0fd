"""The group state machine alone: every transition, its event, and the ones it refuses."""

from __future__ import annotations

import pytest

from pypto_serving.launcher.group_policy import GroupPolicy, GroupState, TransitionError


def policy(max_restarts=2, backoff=0.5):
    return GroupPolicy(1, (2, 3), max_restarts, backoff)


def test_ready_only_when_every_rank_reported_with_every_payload():
    p = policy()
    assert p.start().kind == "starting"
    assert p.worker_ready(3, {"endpoint": "b"}) is None
    assert p.worker_ready(7, {}) is None  # not a rank of this group
    ready = p.worker_ready(2, {"endpoint": "a"})
    assert ready.kind == "ready" and p.state is GroupState.READY
    assert dict(ready.payloads) == {2: {"endpoint": "a"}, 3: {"endpoint": "b"}}


def test_failure_restart_cycle_counts_attempts_and_ends_exhausted():
    p = policy(max_restarts=1)
    p.start()
    failed = p.worker_failed(3, "signal", signal=9, log_tail=("bye",))
    assert (failed.kind, failed.rank, failed.cause, failed.attempt) == ("failed", 3, "signal", 0)
    assert p.worker_failed(2, "exit", exit_code=1) is None  # torn down: no second failure
    restarting = p.torn_down()
    assert (restarting.kind, restarting.attempt, restarting.max_restarts) == ("restarting", 1, 1)
    assert p.start().attempt == 1
    p.worker_failed(2, "hung")
    final = p.torn_down()
    assert (final.kind, final.rank, final.cause) == ("stopped", 2, "hung")
    assert p.exhausted and p.state is GroupState.STOPPED
    assert p.stop() is None


def test_backoff_doubles_while_restarts_never_reach_ready_and_resets_after_ready():
    p = policy(max_restarts=5, backoff=0.5)
    waits = []
    for ready in (False, False, True, False):
        p.start()
        if ready:
            p.worker_ready(2, {})
            p.worker_ready(3, {})
        p.worker_failed(2, "exit", exit_code=1)
        p.torn_down()
        waits.append(p.backoff_s())
    assert waits == [0.5, 1.0, 0.5, 1.0]


def test_stop_from_any_live_state_and_refused_transitions():
    for steps in ([], ["start"], ["start", "fail"], ["start", "fail", "down"]):
        p = policy()
        for step in steps:
            if step == "start":
                p.start()
            elif step == "fail":
                p.worker_failed(2, "exit", exit_code=1)
            else:
                p.torn_down()
        assert p.stop().kind == "stopped" and not p.exhausted
    p = policy()
    with pytest.raises(TransitionError):
        p.torn_down()
    with pytest.raises(ValueError, match="unknown cause"):
        p.start() and p.worker_failed(2, "bored")


def test_describe_names_group_rank_and_cause():
    p = policy()
    p.start()
    e = p.worker_failed(3, "exited-0", exit_code=0)
    assert e.describe() == ("group 1 (ranks 2-3) failed: rank 3 exited with code 0 while the "
                            "service should run")
    e = p.torn_down()
    assert e.describe() == "group 1 (ranks 2-3) restarting (restart 1 of 2)"
