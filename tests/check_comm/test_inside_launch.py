"""`pypto check-comm` as the worker of an existing `pypto launch` (PYPTO_CONFIG set): every
rank runs its part, the records reach rank 0 through the store, rank 0 reports."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.timeout(200)


def test_inside_a_launch_rank_0_reports_for_every_rank(pypto_launch, tmp_path,
                                                       validate_report):
    report_path = tmp_path / "report.json"
    r = pypto_launch(["--standalone", "-tp", "2", "--platform", "cpu", "--nproc-per-node", "2",
                      "-m", "pypto_serving.cli.entry", "check-comm", "--sizes", "1KB",
                      "--iters", "3", "--warmup", "1", "--json", str(report_path)], timeout=150)
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads(report_path.read_text())
    validate_report(report)
    assert report["ok"] and report["world_size"] == 2
    assert {tuple(row["ranks"]) for row in report["results"]} == {(0, 1)}
    assert all(set(row["rank_time_us"]) == {"0", "1"} for row in report["results"])
    lines = [line for line in r.stdout.splitlines() if "check-comm: OK" in line]
    assert lines and all(line.startswith("[rank0]:") for line in lines)


def test_inside_a_launch_the_layout_is_the_launchs(pypto_launch):
    r = pypto_launch(["--standalone", "-tp", "2", "--platform", "cpu", "--nproc-per-node", "2",
                      "-m", "pypto_serving.cli.entry", "check-comm", "-tp", "4"], timeout=120)
    assert r.returncode != 0
    assert "inside a launch the layout is the launch's (PYPTO_CONFIG)" in r.stdout + r.stderr
