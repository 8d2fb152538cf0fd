"""`pypto simulate` as a user runs it: tables and JSON (jsonschema-validated), the default
answer for 16 ranks, bad input (exit 2 naming the flag), and no torch in analytic mode."""

from __future__ import annotations

import json
import subprocess
import sys

import jsonschema
import pytest
from typer.testing import CliRunner

from pypto_serving.cli.main import app
from pypto_serving.core.simulate_report import SCHEMA, SIMULATE_JSON_SCHEMA

pytestmark = pytest.mark.timeout(120)
runner = CliRunner()


def simulate(*args: str):
    return runner.invoke(app, ["simulate", *args])


def simulate_json(*args: str) -> dict:
    result = simulate(*args, "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    jsonschema.Draft202012Validator(SIMULATE_JSON_SCHEMA).validate(doc)
    assert doc["schema"] == SCHEMA
    return doc


def _groups(entry: dict) -> dict:
    return {g["kind"]: g for g in entry["groups"]}


def test_sixteen_ranks_on_the_defaults_rank_layouts_and_keep_tp_inside_a_node():
    doc = simulate_json("--ranks", "16")
    assert doc["hardware"] == {"name": "h200-nvlink-ib", "platform": "cuda",
                               "devices_per_node": 8, "nnodes": 2}
    search = doc["search"]
    assert search["valid"] >= 10 and len(search["ranked"]) == 10
    best = doc["layout"]
    assert best["label"] == search["ranked"][0]["label"]
    for entry in search["ranked"]:
        tp = _groups(entry)["tp"]
        assert tp["size"] <= 8 and tp["crossing_nodes"] == 0 and tp["link"] == "intra_node"
    assert best["decode_tokens_per_s"] > 0 and best["memory"]["fits"]


def test_a_given_layout_shows_its_groups_memory_and_traffic():
    doc = simulate_json("--ranks", "16", "-dp", "2", "-tp", "8")
    entry = doc["layout"]
    assert doc["search"] is None
    groups = _groups(entry)
    assert (groups["tp"]["count"], groups["tp"]["size"], groups["tp"]["crossing_nodes"]) == \
        (2, 8, 0)
    assert groups["dp"]["crossing_nodes"] == 8 and groups["dp"]["link"] == "inter_node"
    decode = {g["kind"]: g for g in entry["decode"]["groups"]}
    # Mixtral's shape, TP 8, batch 32: 2 all_reduces per layer + the embedding's, each
    # 32 tokens x 4096 x 2 bytes, on each of 8 ranks; + the logits gather of 32 x 4000 rows
    reduces = 2 * 32 + 1
    assert decode["tp"]["ops"]["all_reduce"] == {"calls": 8 * reduces,
                                                 "bytes": 8 * reduces * 32 * 4096 * 2}
    assert decode["tp"]["ops"]["all_gather"] == {"calls": 8, "bytes": 8 * 32 * 4000 * 2}
    assert decode["tp"]["link"] == "intra_node" and decode["tp"]["seconds"] > 0
    # TP across both nodes is allowed by the contract, and the table says it crosses
    wide = _groups(simulate_json("--ranks", "16", "-tp", "16")["layout"])["tp"]
    assert wide["crossing_nodes"] == 1 and wide["link"] == "inter_node"


def test_tables_name_what_crosses_a_node():
    result = simulate("--ranks", "16", "-dp", "2", "-tp", "8")
    assert result.exit_code == 0, result.output
    out = result.stdout
    for text in ("Groups of DP 2 x PP 1 x TP 8", "crossing a node boundary", "inter-node",
                 "KV capacity", "prefill latency", "tokens/s"):
        assert text in out


def test_search_top_k_and_every_drop_listed_in_json():
    doc = simulate_json("--ranks", "64", "--search", "--top", "3",
                        "--model", "deepseek-v3-shape")
    search = doc["search"]
    assert len(search["ranked"]) == 3 and search["ranked_truncated"]
    assert search["considered"] == search["valid"] + len(search["dropped"])
    assert all(d["reasons"] for d in search["dropped"])


@pytest.mark.parametrize("args,flag", [
    (["--ranks", "0"], "--ranks"),
    (["--ranks", "12"], "--ranks"),
    (["--ranks", "16", "-tp", "4"], "--ranks"),
    (["--ranks", "16", "--hardware", "h100"], "--hardware"),
    (["--ranks", "16", "--top", "0"], "--top"),
    (["--ranks", "16", "--calibration", "/nonexistent/cal.json"], "--calibration"),
    (["--ranks", "16", "--model", "tiny-moe", "--model-profile", "tiny-moe"], "--model"),
    (["--ranks", "16", "--model", "nope"], "nope"),
    (["--ranks", "16", "--config", "/nonexistent.yaml"], "--config"),
    (["--ranks", "16", "-dp", "16", "--execute"], "--execute"),
])
def test_bad_input_exits_2_naming_the_flag(args, flag):
    result = simulate(*args)
    assert result.exit_code == 2, result.output
    assert flag in result.stderr
    assert "Traceback" not in result.output


def test_a_calibration_file_that_is_not_a_report_is_refused(tmp_path):
    bad = tmp_path / "cal.json"
    bad.write_text('{"schema": "pypto.topology/v1"}')
    result = simulate("--ranks", "16", "--calibration", str(bad))
    assert result.exit_code == 2
    assert "--calibration" in result.stderr and "pypto.commcheck/v1" in result.stderr


def test_analytic_mode_imports_no_torch(tmp_path):
    report = tmp_path / "cal.json"
    report.write_text(json.dumps({"schema": "pypto.commcheck/v1", "results": [
        {"op": "all_reduce", "ranks": [0, 1], "bytes": b, "time_us": 100 + b / 1000,
         "wrong": 0} for b in (64, 4096, 65536)]}))
    code = ("import sys\n"
            "from typer.testing import CliRunner\n"
            "from pypto_serving.cli.main import app\n"
            "r = CliRunner().invoke(app, ['simulate', '--ranks', '16', '--json'])\n"
            "assert r.exit_code == 0, r.output\n"
            "r = CliRunner().invoke(app, ['simulate', '--ranks', '8', '-tp', '8'])\n"
            "assert r.exit_code == 0, r.output\n"
            f"r = CliRunner().invoke(app, ['simulate', '--ranks', '4', '--hardware', "
            f"'cpu-host', '--search', '--calibration', {str(report)!r}])\n"
            "assert r.exit_code == 0, r.output\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
