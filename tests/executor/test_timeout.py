"""A collective on any subgroup whose peer never arrives fails after PYPTO_COMM_TIMEOUT_S, with
an error naming the group, instead of waiting torch's default (30 minutes on gloo)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import executor_cases as cases
import executor_jobs as jobs
import psutil
import pytest

HERE = Path(__file__).parent
TIMEOUT_S = 3
STUCK_S = 120  # how long the stuck rank sleeps: the job must end long before

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize(("kind", "layout"), [
    ("tp", cases.config(tp=2)),
    ("pp", cases.config(pp=2)),
    ("dp", cases.config(dp=2)),
    ("ep", cases.config(dp=2, moe=True, ep=True)),
])
def test_an_all_reduce_with_a_stuck_peer_fails_within_the_timeout(tmp_path, kind, layout):
    out = tmp_path / "out"
    out.mkdir()
    start = time.monotonic()
    proc = jobs.launch(layout, HERE / "stuck_worker.py",
                       [kind, "1", str(STUCK_S), str(out)], tmp_path, timeout=90,
                       env={"PYPTO_COMM_TIMEOUT_S": str(TIMEOUT_S)})
    elapsed = time.monotonic() - start
    report = proc.stdout + proc.stderr
    assert proc.returncode == 1, report  # a worker failed (the launcher's code for it)
    row = json.loads((out / "rank0.json").read_text())
    assert TIMEOUT_S * 0.9 <= row["waited_s"] <= TIMEOUT_S + 5, row
    assert row["error"].startswith(
        f"CommTimeoutError: {kind.upper()} group #0 (ranks [0, 1]): all_reduce on rank 0 "
        "waited 3 s "
        "(PYPTO_COMM_TIMEOUT_S) for a peer that never joined"), row
    assert "rank 0 (local rank 0, node 0) exited with code 1" in report, report
    assert "stopped the other worker(s) of this node: rank 1" in report, report
    assert not (out / "rank1.json").exists()  # the stuck rank was stopped while it slept
    assert elapsed < STUCK_S / 2
    leftovers = [p for p in psutil.process_iter(["cmdline"])
                 if str(out) in " ".join(p.info["cmdline"] or [])]
    assert leftovers == []
