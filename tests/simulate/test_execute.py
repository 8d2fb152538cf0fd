"""--execute: layouts run for real (CPU worker processes, gloo, through the launcher) and
the bytes every group counted equal core's prediction exactly, step by step."""

from __future__ import annotations

import json

import jsonschema
import pytest
from typer.testing import CliRunner

from pypto_serving.cli.main import app
from pypto_serving.core.cost_model import LinkModel
from pypto_serving.core.hardware import hardware_profile
from pypto_serving.core.loader import parse_config
from pypto_serving.core.simulate_report import SIMULATE_JSON_SCHEMA
from pypto_serving.simulate.execute import execute_layouts

pytestmark = pytest.mark.timeout(300)

MODEL = {"name": "tiny", "num_layers": 4, "hidden_size": 64, "num_attention_heads": 8,
         "num_kv_heads": 2, "intermediate_size": 128, "num_experts": 0,
         "experts_per_token": 2, "vocab_size": 102, "max_seq_len": 64}


def config(dp=1, tp=1, pp=1, ep=False, model=None, **parallel):
    return parse_config({
        "parallel": {"data_parallel_size": dp, "tensor_parallel_size": tp,
                     "pipeline_parallel_size": pp, "enable_expert_parallel": ep, **parallel},
        "model": {**MODEL, **(model or {})},
        "cluster": {"nnodes": 1, "devices_per_node": dp * tp * pp, "platform": "cpu"},
        "serve": {"kv_block_size": 4}})


MOE = {"num_experts": 8}
LAYOUTS = [
    config(tp=2, pp=2, model={"num_layers": 5}),
    config(dp=2, tp=2, ep=True, model=MOE),
    config(dp=4, ep=True, model=MOE, expert_placement_strategy="round_robin",
           all2all_backend="allgather_reducescatter"),
    config(tp=4, model=MOE),
    config(pp=4),
]


@pytest.fixture(scope="module")
def executed() -> dict:
    hw = hardware_profile("cpu-host")
    return execute_layouts(LAYOUTS, hw, LinkModel.of(hw), batch=3, prompt_len=5,
                           decode_steps=3)


def test_every_group_counts_exactly_the_predicted_bytes(executed):
    assert len(executed["layouts"]) == len(LAYOUTS)
    for layout in executed["layouts"]:
        assert layout["bytes_equal"], layout["label"]
        moved = 0
        for row in layout["groups"]:
            assert row["predicted_ops"] == row["counted_ops"], (layout["label"], row)
            assert row["predicted"] == row["counted"]
            moved += row["counted"]
        assert moved > 0, f"{layout['label']}: no group moved anything, nothing was checked"
        steps = {row["step"].split()[0] for row in layout["groups"]}
        assert steps == {"prefill", "decode"}


def test_each_kind_with_traffic_was_checked(executed):
    kinds = {row["kind"] for lay in executed["layouts"] for row in lay["groups"]
             if row["counted"]}
    assert kinds == {"tp", "pp", "ep"}
    ops = {op for lay in executed["layouts"] for row in lay["groups"]
           for op in row["counted_ops"]}
    assert ops == {"all_reduce", "all_gather", "send", "recv", "broadcast", "all_to_all",
                   "reduce_scatter"}


def test_step_times_are_measured_and_ranked(executed):
    for layout in executed["layouts"]:
        assert layout["measured_decode_s"] > 0 and layout["predicted_decode_s"] > 0
    assert -1.0 <= executed["rank_correlation"] <= 1.0


def test_the_cli_prints_predicted_and_counted_bytes_side_by_side():
    result = CliRunner().invoke(app, [
        "simulate", "--ranks", "2", "--hardware", "cpu-host", "--model", "tiny-moe",
        "-tp", "2", "--enable-expert-parallel", "--execute", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    jsonschema.Draft202012Validator(SIMULATE_JSON_SCHEMA).validate(doc)
    (layout,) = doc["execute"]["layouts"]
    assert layout["bytes_equal"] and layout["label"] == "DP 1 x PP 1 x TP 2 + EP 2 (linear)"
    assert {row["kind"] for row in layout["groups"] if row["counted"]} == {"tp", "ep"}


def test_a_real_sized_model_is_refused_before_anything_starts():
    result = CliRunner().invoke(app, ["simulate", "--ranks", "2", "-tp", "2", "--execute"])
    assert result.exit_code == 2
    assert "--model tiny-moe" in result.stderr and "GiB of weights per rank" in result.stderr
