"""check-comm on CUDA with NCCL: the same command; a world of one runs every op of its
groups on the device, checks every result, and says bus bandwidth does not apply.

Skipped where no CUDA device is present (CI has none).
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
              pytest.mark.timeout(300)]


def test_a_world_of_one_gpu_runs_and_says_busbw_does_not_apply(check_comm, validate_report):
    r = check_comm(["-tp", "1", "--platform", "cuda", "--devices-per-node", "1",
                    "--sizes", "8B:64MB:x8", "--iters", "5", "--warmup", "2"])
    assert r.rc == 0, r.out + r.err
    report = r.report
    validate_report(report)
    assert report["platform"] == "cuda" and report["backend"] == "nccl"
    assert report["ok"] and report["wrong"] == 0
    assert {row["op"] for row in report["results"]} == {
        "all_reduce", "all_gather", "reduce_scatter", "broadcast", "barrier"}
    assert all(row["busbw_gbps"] is None for row in report["results"])
    assert "bus bandwidth does not apply to one rank" in r.out


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_two_gpus_give_right_results_and_a_bus_bandwidth(check_comm, validate_report):
    r = check_comm(["-tp", "2", "--platform", "cuda", "--devices-per-node", "2",
                    "--sizes", "8B:64MB:x8", "--iters", "5", "--warmup", "2"])
    assert r.rc == 0, r.out + r.err
    report = r.report
    validate_report(report)
    assert report["ok"] and report["backend"] == "nccl"
    assert all(row["busbw_gbps"] > 0 for row in report["results"] if row["op"] != "barrier")
