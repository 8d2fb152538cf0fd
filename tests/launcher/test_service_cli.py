"""`pypto launch --service` prints the events as they happen and stops cleanly on SIGINT."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.timeout(120)


def wait_for(path, pattern: str, proc, timeout: float = 60.0) -> str:
    """Poll the launcher's stderr file until a line matches; all of it so far."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = path.read_text()
        if re.search(pattern, text, re.M):
            return text
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    proc.kill()
    pytest.fail(f"no line matching {pattern!r}; stderr so far:\n{path.read_text()}")


def test_cli_prints_group_events_in_order_and_sigint_stops_all(service, tmp_path):
    err = tmp_path / "stderr.txt"
    out = tmp_path / "stdout.txt"
    args = ["--service", "--config", str(service.config(dp=2)), "--standalone",
            "--max-restarts", "1", "--grace-period", "2",
            str(service.workers / "service_worker.py")]
    with open(out, "w") as o, open(err, "w") as e:
        proc = subprocess.Popen([sys.executable, "-m", "pypto_serving.cli.entry", "launch",
                                 *args], stdout=o, stderr=e, text=True)
    try:
        wait_for(err, r"group 1 \(rank 1\) ready \(attempt 0\)", proc)
        wait_for(err, r"group 0 \(rank 0\) ready \(attempt 0\)", proc)
        pid = {r["rank"]: r["pid"] for r in
               (json.loads(line.split(":", 1)[1]) for line in out.read_text().splitlines()
                if line.startswith("[rank"))}[1]
        os.kill(pid, signal.SIGKILL)
        wait_for(err, r"group 1 \(rank 1\) ready \(attempt 1\)", proc)
        proc.send_signal(signal.SIGINT)
        code = proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = err.read_text()
    group1 = [line.split(") ", 1)[1] for line in text.splitlines()
              if line.startswith("pypto launch: group 1 ")]
    assert group1 == ["starting (attempt 0)", "ready (attempt 0)",
                      "failed: rank 1 killed by SIGKILL", "restarting (restart 1 of 1)",
                      "starting (attempt 1)", "ready (attempt 1)", "stopped"]
    group0 = [line.split(") ", 1)[1] for line in text.splitlines()
              if line.startswith("pypto launch: group 0 ")]
    assert group0 == ["starting (attempt 0)", "ready (attempt 0)", "stopped"]
    assert code == 130


def test_plain_launch_still_counts_exit_0_as_success(lt):
    """Without --service nothing changes: a worker that exits 0 ends the launch with 0."""
    r = lt.run(["--standalone", "--nproc-per-node", "2", str(lt.workers / "allreduce.py")],
               timeout=90)
    assert r.returncode == 0, r.stderr
    assert "group" not in r.stderr
    assert {rank: j["sum"] for rank, j in lt.rank_json(r.stdout).items()} == {0: 3.0, 1: 3.0}


@pytest.mark.parametrize("flag,value,says", [
    ("--heartbeat-timeout", "0", "--heartbeat-timeout must be > 0"),
    ("--max-log-bytes", "10", "--max-log-bytes 10 is too small"),
])
def test_bad_service_flags_are_usage_errors_naming_the_flag(lt, flag, value, says):
    r = lt.run(["--service", "--standalone", flag, value, str(lt.workers / "allreduce.py")],
               timeout=60)
    assert r.returncode == 2
    assert says in r.stderr and "Traceback" not in r.stderr
