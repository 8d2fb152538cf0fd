"""Supervision: a failure stops the group, restarts, signals; nothing is ever left running."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(120)


def _pids(rows: dict[int, dict]) -> list[int]:
    """Every worker, its parent (zygote or launcher) and grandchild from the JSON rows."""
    pids = []
    for row in rows.values():
        pids += [row["pid"], row["ppid"]] + ([row["grandchild"]] if row["grandchild"] else [])
    return pids


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_failing_worker_stops_the_others_and_nothing_remains(method, port, lt):
    start = time.monotonic()
    result = lt.run(["--nproc-per-node", "3", "--master-port", str(port), "--start-method",
                     method, str(lt.workers / "behave.py"), "--fail-rank", "1", "--code", "3",
                     "--grandchild"], timeout=60)
    assert result.returncode == 1
    assert time.monotonic() - start < 30  # the sleepers (60 s) were stopped, not waited for
    report = result.stderr
    assert re.search(r"rank 1 \(local rank 1, node 0\) exited with code 3 at \d{4}-\d\d-\d\d",
                     report), report
    assert "[rank1]:rank 1 failing now" in report  # the tail of its log
    assert "stopped the other worker(s) of this node: rank" in report
    rows = lt.rank_json(result.stdout)
    assert sorted(rows) == [0, 1, 2]
    lt.assert_gone(_pids(rows))


def test_kill_9_of_one_worker_tears_down_the_tree(port, lt):
    job = lt.start(["--nproc-per-node", "3", "--master-port", str(port),
                    str(lt.workers / "behave.py"), "--grandchild"])
    rows = job.wait_for_json(3, timeout=60)
    assert all(lt.running(pid) for pid in _pids(rows))
    os.kill(rows[2]["pid"], signal.SIGKILL)
    code, out, err = job.finish(timeout=30)
    assert code == 1
    assert "rank 2 (local rank 2, node 0) killed by SIGKILL" in err, err
    lt.assert_gone(_pids(rows))


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_to_the_launcher_is_forwarded_and_it_exits_cleanly(sig, port, lt):
    job = lt.start(["--nproc-per-node", "2", "--master-port", str(port),
                    str(lt.workers / "behave.py"), "--grandchild"])
    rows = job.wait_for_json(2, timeout=60)
    assert all(lt.running(pid) for pid in _pids(rows))
    job.signal(sig)
    code, out, err = job.finish(timeout=30)
    assert code == 128 + sig
    assert f"stopped by {signal.Signals(sig).name}" in err
    assert not [line for line in err.splitlines()
                if "Traceback" in line and not line.startswith("[rank")]
    lt.assert_gone(_pids(rows))


def test_worker_ignoring_sigterm_is_killed_after_the_grace_period(port, lt):
    start = time.monotonic()
    result = lt.run(["--nproc-per-node", "2", "--master-port", str(port), "--grace-period", "1",
                     str(lt.workers / "behave.py"), "--fail-rank", "0", "--ignore-term"],
                    timeout=60)
    assert result.returncode == 1
    assert time.monotonic() - start < 30
    lt.assert_gone(_pids(lt.rank_json(result.stdout)))


def test_restart_recovers_a_failing_group(port, lt):
    result = lt.run(["--nproc-per-node", "2", "--master-port", str(port), "--max-restarts", "2",
                     str(lt.workers / "behave.py"), "--fail-rank", "0",
                     "--fail-until-restart", "1", "--sleep", "0.5"], timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("worker failure") == 1
    assert "restarting the local group (restart 1 of 2)" in result.stderr
    restarts = sorted({line for lines in lt.rank_lines(result.stdout).values()
                       for line in lines if '"restart"' in line and '"restart": 1' in line})
    assert len(restarts) == 2  # both ranks ran again with TORCHELASTIC_RESTART_COUNT=1
    assert "rank 0 done" in result.stdout and "rank 1 done" in result.stdout


def test_restarts_exhausted_fails_with_every_report(port, lt):
    result = lt.run(["--nproc-per-node", "2", "--master-port", str(port), "--max-restarts", "1",
                     str(lt.workers / "behave.py"), "--fail-rank", "1", "--code", "7"],
                    timeout=60)
    assert result.returncode == 1
    assert "worker failure on attempt 1 of 2 (restart 0)" in result.stderr
    assert "worker failure on attempt 2 of 2 (restart 1)" in result.stderr
    assert result.stderr.count("exited with code 7") == 2


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_orphans_in_their_own_session_are_reaped_too(method, port, lt):
    result = lt.run(["--nproc-per-node", "2", "--master-port", str(port), "--start-method",
                     method, str(lt.workers / "orphan.py")], timeout=60)
    assert result.returncode == 0, result.stderr
    rows = lt.rank_json(result.stdout)
    assert sorted(rows) == [0, 1]
    lt.assert_gone([row["orphan"] for row in rows.values()])


def test_kill_9_of_the_launcher_takes_its_workers_down(port, lt):
    job = lt.start(["--nproc-per-node", "2", "--master-port", str(port),
                    str(lt.workers / "behave.py")])
    rows = job.wait_for_json(2, timeout=60)
    job.proc.kill()
    job.proc.wait(10)
    # parent-death signals: the zygote dies with the launcher, the workers with the zygote
    lt.assert_gone([pid for row in rows.values() for pid in (row["pid"], row["ppid"])])


def test_ctrl_c_while_starting_leaves_nothing(port, lt):
    import psutil

    job = lt.start(["--nproc-per-node", "2", "--master-port", str(port),
                    str(lt.workers / "behave.py")])
    deadline = time.monotonic() + 30
    family: list[int] = []
    while not family:  # the zygote exists: the launcher's handlers are in place
        assert time.monotonic() < deadline and job.proc.poll() is None
        family = [p.pid for p in psutil.Process(job.proc.pid).children(recursive=True)]
        time.sleep(0.01)
    time.sleep(0.2)  # the zygote is importing torch: no worker exists yet
    job.signal(signal.SIGINT)
    code, out, err = job.finish(timeout=30)
    assert code == 130, err
    assert "stopped by SIGINT before the workers ran" in err, err
    assert "Traceback" not in err.replace("[rank", "")
    lt.assert_gone(family + [row["pid"] for row in lt.rank_json(out).values()])


def test_report_blames_the_killed_rank_not_the_peer_that_reacted(port, lt, tmp_path):
    """Both deaths reach the launcher in one batch (the zygote is stopped meanwhile, as a
    busy machine would delay it); the signal death is the cause, the exit 1 its effect."""
    import psutil

    job = lt.start(["--nproc-per-node", "2", "--master-port", str(port), "--start-method",
                    "fork", str(lt.workers / "peerwatch.py"), str(tmp_path)])
    rows = job.wait_for_json(2, timeout=60)
    zygote = rows[0]["ppid"]
    os.kill(zygote, signal.SIGSTOP)
    try:
        os.kill(rows[1]["pid"], signal.SIGKILL)
        deadline = time.monotonic() + 20
        while psutil.Process(rows[0]["pid"]).status() != psutil.STATUS_ZOMBIE:
            assert time.monotonic() < deadline, "rank 0 did not react to its peer's death"
            time.sleep(0.02)
    finally:
        os.kill(zygote, signal.SIGCONT)
    code, out, err = job.finish(timeout=30)
    assert code == 1
    lines = err.splitlines()
    first = lines[next(i for i, x in enumerate(lines) if "worker failure" in x) + 1]
    assert "rank 1 (local rank 1, node 0) killed by SIGKILL" in first, err
    assert "then rank 0 (local rank 0) exited with code 1" in err
    lt.assert_gone([rows[0]["pid"], rows[1]["pid"], zygote])


def test_each_worker_gets_a_forwarded_signal_once(port, lt, tmp_path):
    """killpg + kill of a group leader delivered SIGTERM twice. Two deliveries close
    together often merge into one, so besides the workers' own count the launcher's every
    os.kill/os.killpg is recorded (audit hook): one SIGTERM per worker, and one handled."""
    audit = tmp_path / "signals.log"
    job = lt.start(["--nproc-per-node", "2", "--master-port", str(port),
                    str(lt.workers / "sigcount.py"), str(tmp_path)],
                   env={**os.environ, "AUDIT_SIGNALS_FILE": str(audit)},
                   entry=[str(lt.workers / "audited_launch.py")])
    rows = job.wait_for_json(2, timeout=60)
    job.signal(signal.SIGTERM)
    code, out, err = job.finish(timeout=30)
    assert code == 128 + signal.SIGTERM, err
    sent = audit.read_text().splitlines()
    for rank, row in rows.items():
        counted = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert counted["calls"] == 1, counted
        to_it = [x for x in sent if x.split()[1:] == [str(row["pid"]), str(int(signal.SIGTERM))]]
        assert len(to_it) == 1, sent


def test_a_dead_zygote_is_reported_and_the_restart_spawns(port, lt):
    job = lt.start(["--nproc-per-node", "2", "--master-port", str(port), "--start-method",
                    "fork", "--max-restarts", "1", str(lt.workers / "behave.py"),
                    "--restart-sleep", "0.2"])
    rows = job.wait_for_json(2, timeout=60)
    zygote = rows[0]["ppid"]
    os.kill(zygote, signal.SIGKILL)
    code, out, err = job.finish(timeout=30)
    assert code == 0, err
    assert f"failed: the zygote (pid {zygote}) killed by SIGKILL" in err, err
    assert "node 0) killed by SIGKILL" not in err  # no worker is blamed
    again = lt.rank_json(out)
    assert [row["restart"] for row in again.values()] == [1, 1]
    assert {row["ppid"] for row in again.values()} == {job.proc.pid}  # spawned, no zygote
    lt.assert_gone([zygote] + [row["pid"] for row in (*rows.values(), *again.values())])


def test_a_stopped_zygote_cannot_hang_the_launcher(port, lt):
    """Forked workers' ends come from the zygote; with it stopped, the launcher finds them
    dead itself and ends after the grace period and the SIGKILL wait."""
    job = lt.start(["--nproc-per-node", "2", "--master-port", str(port), "--start-method",
                    "fork", "--grace-period", "1", str(lt.workers / "behave.py")])
    rows = job.wait_for_json(2, timeout=60)
    zygote = rows[0]["ppid"]
    os.kill(zygote, signal.SIGSTOP)
    try:
        job.signal(signal.SIGTERM)
        code, out, err = job.finish(timeout=20)
    finally:
        if lt.running(zygote):
            os.kill(zygote, signal.SIGCONT)
    assert code == 128 + signal.SIGTERM, err
    lt.assert_gone([zygote] + [row["pid"] for row in rows.values()])


def test_run_dirs_of_dead_launchers_are_swept(port, lt, tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    base = Path(tempfile.gettempdir())
    stale = base / f"pypto-launch-run-{dead.pid}-test"
    live = base / f"pypto-launch-run-{os.getpid()}-test"
    for folder in (stale, live):
        (folder / "attempt_0").mkdir(parents=True, exist_ok=True)
    script = tmp_path / "ok.py"
    script.write_text("print('ok')\n")
    try:
        result = lt.run(["--master-port", str(port), str(script)], timeout=30)
        assert result.returncode == 0, result.stderr
        assert not stale.exists() and live.exists()
    finally:
        import shutil

        for folder in (stale, live):
            shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_kill_9_of_the_launcher_leaves_no_descendant(method, port, lt):
    """kill -9 runs no cleanup in the launcher: the zygote (every worker's parent in both
    start methods) sees its socket close and kills every descendant, also those that left
    the worker's process group or were orphaned."""
    import psutil

    job = lt.start(["--nproc-per-node", "2", "--master-port", str(port), "--start-method",
                    method, str(lt.workers / "escape.py")])
    rows = job.wait_for_json(2, timeout=60)
    below = [p.pid for p in psutil.Process(job.proc.pid).children(recursive=True)]
    left = [pid for row in rows.values() for pid in row["left"]]
    workers = [row["pid"] for row in rows.values()]
    assert set(workers + left) <= set(below), (below, rows)
    assert all(lt.running(pid) for pid in below)
    job.proc.kill()
    job.proc.wait(5)
    lt.assert_gone(below, timeout=10)


@pytest.mark.parametrize(("mode", "shown"), [
    ("fifo", None),
    ("big", "(its error file is 300000000 bytes, over the 1048576 read;"),
    ("control", "error: boom \\x1b[2J\\x07 done"),
])
def test_error_files_are_read_with_bounds(mode, shown, port, lt):
    """The error file is the worker's: a FIFO must not block the launcher, a 300 MB file
    is not read, control bytes in the message are escaped."""
    result = lt.run(["--master-port", str(port), str(lt.workers / "errfile.py"), mode],
                    timeout=30)
    assert result.returncode == 1, result.stderr
    assert "rank 0 (local rank 0, node 0) exited with code 1" in result.stderr
    assert "\x1b" not in result.stderr
    if shown is None:
        assert "error:" not in result.stderr
    else:
        assert shown in result.stderr, result.stderr
