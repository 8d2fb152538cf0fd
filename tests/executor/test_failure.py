"""A rank killed mid-step ends the job with the launcher's failure report, never a hang."""

from __future__ import annotations

import time
from pathlib import Path

import executor_cases as cases
import executor_jobs as jobs
import psutil
import pytest

HERE = Path(__file__).parent

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize("layout", [
    pytest.param(cases.config(tp=2), id="tp2"),
    pytest.param(cases.config(dp=2, moe=True, ep=True), id="dp2-ep"),
])
def test_a_rank_killed_mid_step_gives_the_failure_report(tmp_path, layout):
    marks = tmp_path / "marks"
    marks.mkdir()
    start = time.monotonic()
    proc = jobs.launch(layout, HERE / "crash_worker.py", ["1", str(marks)], tmp_path,
                       timeout=60)
    elapsed = time.monotonic() - start
    report = proc.stdout + proc.stderr
    assert proc.returncode == 1, report  # the launcher's code for a failed worker
    assert "worker failure on attempt 1 of 1" in report, report
    assert "rank 1 (local rank 1, node 0) killed by SIGKILL" in report, report
    # the survivor was stopped by the launcher, not failed on its own (a timeout, say)
    assert "stopped the other worker(s) of this node: rank 0" in report, report
    assert "exited with code" not in report, report
    assert "finished all steps" not in report
    # both ranks got through prefill and one decode step before the victim died in step 2
    assert {p.name for p in marks.iterdir()} == {"rank0.step1", "rank0.step2",
                                                 "rank1.step1", "rank1.step2"}
    assert elapsed < 45
    leftovers = [p for p in psutil.process_iter(["cmdline"])
                 if str(marks) in " ".join(p.info["cmdline"] or [])]
    assert leftovers == []
