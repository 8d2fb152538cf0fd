"""--calibration: check-comm reports fitted to the ring alpha-beta model (a report made from
known figures gives them back), used per group size, and the rank correlation by hand."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from pypto_serving.cli.main import app
from pypto_serving.core.calibration import CalibrationError, calibrate, spearman
from pypto_serving.core.comm_report import bus_factor
from pypto_serving.core.cost_model import op_seconds, ring_terms
from pypto_serving.core.hardware import LinkSpec, hardware_profile

pytestmark = pytest.mark.timeout(300)


def _row(op: str, ranks: list[int], size: int, seconds: float) -> dict:
    return {"op": op, "ranks": ranks, "bytes": size, "size_bytes": size,
            "time_us": seconds * 1e6, "wrong": 0, "kind": "tp", "group": 0}


def report(rows: list[dict]) -> dict:
    return {"schema": "pypto.commcheck/v1", "world_size": 4, "platform": "cpu",
            "backend": "gloo", "results": rows}


def _write(tmp_path, name: str, doc: dict):
    path = tmp_path / name
    path.write_text(json.dumps(doc))
    return path


def test_a_report_of_known_figures_gives_them_back(tmp_path):
    """all_reduce over 2 ranks at 300 us + 2 GB/s, over 4 at 500 us + 1 GB/s; all_gather's
    bytes are nccl-tests' output (n x the input the executor counts)."""
    truth = {2: LinkSpec(latency_us=300.0, bandwidth_gbps=2.0),
             4: LinkSpec(latency_us=500.0, bandwidth_gbps=1.0)}
    rows = []
    for n, link in truth.items():
        for size in (64, 4096, 262144):
            rows.append(_row("all_reduce", list(range(n)), size,
                             op_seconds("all_reduce", n, 1, size, link)))
            rows.append(_row("all_gather", list(range(n)), size,
                             op_seconds("all_gather", n, 1, size / n, link)))
    rows.append(_row("barrier", [0, 1, 2, 3], 0, 1e-3))  # not a link figure: skipped
    hw = hardware_profile("cpu-host")
    links, summary = calibrate([_write(tmp_path, "a.json", report(rows))], hw)
    for n, link in truth.items():
        for op in ("all_reduce", "all_gather"):
            got = links.spec("intra_node", op, n)
            assert got.latency_us == pytest.approx(link.latency_us, rel=1e-6)
            assert got.bandwidth_gbps == pytest.approx(link.bandwidth_gbps, rel=1e-6)
    # an op the reports lack falls back to the fit over every op of that link
    pooled = links.spec("intra_node", "all_to_all", 4)
    assert pooled == links.links["intra_node"] and pooled != hw.links.intra_node
    assert links.spec("inter_node", "all_reduce", 2) == hw.links.inter_node
    assert {(f["op"], f["ranks"]) for f in summary["fits"]} == {
        ("all_reduce", 2), ("all_gather", 2), ("all_reduce", 4), ("all_gather", 4)}


def test_send_recv_calibrates_both_and_several_reports_combine(tmp_path):
    link = LinkSpec(latency_us=800.0, bandwidth_gbps=0.5)
    p2p = [_row("send_recv", [0, 1], s, link.seconds(s)) for s in (64, 65536)]
    a2a = [_row("all_to_all", [0, 1, 2, 3], s, op_seconds("all_to_all", 4, 1, s, link))
           for s in (256, 262144)]
    paths = [_write(tmp_path, "pp.json", report(p2p)), _write(tmp_path, "ep.json", report(a2a))]
    links, summary = calibrate(paths, hardware_profile("cpu-host"))
    for op, n in (("send", 2), ("recv", 2), ("all_to_all", 4)):
        assert links.spec("intra_node", op, n).latency_us == pytest.approx(800.0)
    assert len(summary["reports"]) == 2


def test_ring_terms_match_check_comms_bus_factors():
    """The bandwidth factors are check-comm's (nccl-tests') bus factors; all_gather's on its
    input, n x the output check-comm counts."""
    for n in (2, 4, 8):
        for op in ("all_reduce", "reduce_scatter", "all_to_all", "broadcast"):
            assert ring_terms(op, n)[1] == pytest.approx(bus_factor(op, n)), (op, n)
        assert ring_terms("all_gather", n)[1] == pytest.approx(n * bus_factor("all_gather", n))
        assert ring_terms("send", n)[1] == bus_factor("send_recv", n)


def test_a_real_check_comm_report_calibrates_the_simulator(tmp_path):
    """`pypto check-comm --json` on 2 CPU ranks, then `pypto simulate --calibration` with it:
    the TP all_reduce is priced with the figures fitted to what check-comm timed."""
    report_path = tmp_path / "cal.json"
    proc = subprocess.run(
        [sys.executable, "-m", "pypto_serving.cli.entry", "check-comm", "--model-profile",
         "tiny-moe", "-tp", "2", "--groups", "tp", "--ops", "all_reduce", "--sizes",
         "64B:64KB:x16", "--iters", "5", "--warmup", "1", "--json", str(report_path)],
        capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    hw = hardware_profile("cpu-host")
    links, summary = calibrate([report_path], hw)
    assert [(f["op"], f["ranks"]) for f in summary["fits"]] == [("all_reduce", 2)]
    fitted = links.spec("intra_node", "all_reduce", 2)
    assert fitted != hw.links.intra_node
    result = CliRunner().invoke(app, ["simulate", "--ranks", "2", "--hardware", "cpu-host",
                                      "--model", "tiny-moe", "-tp", "2", "--calibration",
                                      str(report_path), "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    decode = {g["kind"]: g for g in doc["layout"]["decode"]["groups"]}["tp"]
    calls = decode["ops"]["all_reduce"]["calls"] // 2  # per rank
    per_rank = decode["ops"]["all_reduce"]["bytes"] // 2
    gather = decode["ops"]["all_gather"]
    want = (op_seconds("all_reduce", 2, calls, per_rank, fitted)
            + op_seconds("all_gather", 2, gather["calls"] // 2, gather["bytes"] // 2,
                         links.spec("intra_node", "all_gather", 2)))
    assert decode["seconds"] == pytest.approx(want)
    assert doc["calibration"]["fits"][0]["latency_us"] == pytest.approx(fitted.latency_us)


@pytest.mark.parametrize("doc,why", [
    ({"schema": "pypto.topology/v1"}, "pypto.commcheck/v1"),
    ([1, 2], "pypto.commcheck/v1"),
    ({"schema": "pypto.commcheck/v1"}, "'results'"),
    ({"schema": "pypto.commcheck/v1", "results": [{"op": "all_reduce"}]}, "lacks"),
    ({"schema": "pypto.commcheck/v1", "results": []}, "no usable"),
])
def test_unusable_reports_say_why(tmp_path, doc, why):
    with pytest.raises(CalibrationError, match=why):
        calibrate([_write(tmp_path, "bad.json", doc)], hardware_profile("cpu-host"))


def test_not_json_is_refused(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text("{not json")
    with pytest.raises(CalibrationError, match="not JSON"):
        calibrate([path], hardware_profile("cpu-host"))


@pytest.mark.timeout(30)
def test_a_fifo_or_a_deep_file_is_refused_without_blocking_or_recursion(tmp_path):
    import os

    fifo = tmp_path / "pipe.json"
    os.mkfifo(fifo)  # opening it to read would block until a writer came
    with pytest.raises(CalibrationError, match="is a FIFO .named pipe., not a regular file"):
        calibrate([fifo], hardware_profile("cpu-host"))
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(CalibrationError, match="not JSON .nested more than 32 levels deep"):
        calibrate([deep], hardware_profile("cpu-host"))


def test_spearman_by_hand():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # one swap among four: 1 - 6 x 2 / (4 x 15) = 0.8
    assert spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    # ties take the mean rank
    assert spearman([1, 1, 2], [1, 2, 3]) == pytest.approx(0.8660254)
    assert spearman([1, 1], [1, 2]) is None


def test_a_call_timed_far_too_slow_does_not_move_the_fit(tmp_path):
    """A busy host: one of seven sizes took 20x its time; the medians ignore it."""
    link = LinkSpec(latency_us=400.0, bandwidth_gbps=1.0)
    sizes = [64 * 4 ** i for i in range(7)]
    rows = [_row("all_reduce", [0, 1], s, op_seconds("all_reduce", 2, 1, s, link)
                 * (20 if i == 2 else 1)) for i, s in enumerate(sizes)]
    links, _ = calibrate([_write(tmp_path, "noisy.json", report(rows))],
                         hardware_profile("cpu-host"))
    got = links.spec("intra_node", "all_reduce", 2)
    assert got.latency_us == pytest.approx(400.0, rel=0.05)
    assert got.bandwidth_gbps == pytest.approx(1.0, rel=0.05)
