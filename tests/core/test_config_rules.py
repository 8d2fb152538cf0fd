"""Every validation rule of the config schema, checked by the message a user reads.

Each test asserts the field path, the bad value and the suggested fix, not only that
ConfigError was raised.
"""

from __future__ import annotations

import math
from typing import get_args

import pytest

from pypto_serving.core.config import (
    ModelSpec,
    PlacementStrategy,
    ServingConfig,
    valid_tensor_parallel_sizes,
)
from pypto_serving.core.errors import ConfigError, ConfigIssue
from pypto_serving.core.loader import parse_config
from pypto_serving.core.placement import STRATEGIES

LLAMA_8B = {
    "name": "llama-8b-shape", "num_layers": 32, "hidden_size": 4096,
    "num_attention_heads": 32, "num_kv_heads": 8, "intermediate_size": 14336,
    "num_experts": 0, "vocab_size": 128256,
}


def issues_of(data: dict) -> list[str]:
    """The rendered issue lines of an invalid config ("field=value: message")."""
    with pytest.raises(ConfigError) as info:
        parse_config(data, "test.yaml")
    return [str(issue) for issue in info.value.issues]


def only_issue(data: dict) -> str:
    issues = issues_of(data)
    assert len(issues) == 1, issues
    return issues[0]


# --- sizes and choices -------------------------------------------------------------------

@pytest.mark.parametrize("field", [
    "data_parallel_size", "tensor_parallel_size", "pipeline_parallel_size",
    "data_parallel_size_local",
])
@pytest.mark.parametrize("bad", [0, -3])
def test_parallel_sizes_below_one_name_field_and_bound(field, bad):
    assert only_issue({"parallel": {field: bad}}) == f"parallel.{field}={bad}: must be >= 1"


@pytest.mark.parametrize("section,field", [
    ("model", "num_layers"), ("model", "hidden_size"), ("model", "num_attention_heads"),
    ("model", "num_kv_heads"), ("model", "intermediate_size"), ("model", "vocab_size"),
    ("model", "experts_per_token"), ("model", "max_seq_len"), ("cluster", "nnodes"),
    ("cluster", "devices_per_node"), ("serve", "max_num_seqs"), ("serve", "max_queue"),
    ("serve", "kv_block_size"),
])
def test_counts_below_one_are_rejected(section, field):
    assert only_issue({section: {field: 0}}) == f"{section}.{field}=0: must be >= 1"


def test_negative_experts_and_bad_port_and_theta():
    issues = issues_of({"model": {"num_experts": -1, "rope_theta": 0},
                        "serve": {"port": 70000}})
    assert issues == [
        "model.num_experts=-1: must be >= 0",
        "model.rope_theta=0: must be > 0.0",
        "serve.port=70000: must be <= 65535",
    ]


def test_infinite_rope_theta_is_rejected():
    assert only_issue({"model": {"rope_theta": math.inf}}) == (
        "model.rope_theta=inf: input should be a finite number")


@pytest.mark.parametrize("section,field,bad,choices", [
    ("parallel", "expert_placement_strategy", "roundrobin", "'linear' or 'round_robin'"),
    ("parallel", "all2all_backend", "nccl",
     "'pypto_default' or 'allgather_reducescatter'"),
    ("parallel", "data_parallel_backend", "ray", "'local', 'multiproc' or 'external'"),
    ("parallel", "data_parallel_load_balance", "random",
     "'internal', 'external' or 'hybrid'"),
    ("cluster", "platform", "tpu", "'auto', 'cpu', 'cuda' or 'npu'"),
    ("model", "dtype", "int8", "'float32', 'float16' or 'bfloat16'"),
    ("serve", "policy", "random",
     "'least_loaded', 'round_robin', 'power_of_two', 'prefix_aware' or 'session'"),
])
def test_unknown_names_list_the_choices(section, field, bad, choices):
    assert only_issue({section: {field: bad}}) == (
        f"{section}.{field}='{bad}': not a valid choice; use {choices}")


def test_placement_strategies_of_schema_and_placement_agree():
    assert get_args(PlacementStrategy) == STRATEGIES


def test_wrong_type_names_the_field():
    issue = only_issue({"parallel": {"tensor_parallel_size": "four"}})
    assert issue.startswith("parallel.tensor_parallel_size='four': ")
    assert "integer" in issue


@pytest.mark.parametrize("data", [{"parallel": "x"}, {"model": [1, 2]}])
def test_section_that_is_not_a_mapping(data):
    (section,) = data
    assert only_issue(data).startswith(f"{section}=")
    assert only_issue(data).endswith("must be a mapping (a section of keys)")


# --- unknown keys ------------------------------------------------------------------------

def test_unknown_section_suggests_the_close_one():
    assert only_issue({"paralel": {}}) == (
        "paralel={}: unknown key; did you mean 'parallel'? "
        "known keys: parallel, model, cluster, serve")


def test_unknown_nested_key_suggests_the_close_one():
    issue = only_issue({"parallel": {"tensor_paralel_size": 2}})
    assert issue.startswith(
        "parallel.tensor_paralel_size=2: unknown key; did you mean 'tensor_parallel_size'? "
        "known keys: data_parallel_size, tensor_parallel_size,")


def test_unknown_key_without_a_close_match_lists_known_keys():
    issue = only_issue({"cluster": {"gpus": 8}})
    assert issue == ("cluster.gpus=8: unknown key; known keys: nnodes, devices_per_node, "
                     "platform")


# --- world size vs cluster ---------------------------------------------------------------

def test_world_larger_than_cluster_suggests_devices_per_node():
    assert only_issue({"parallel": {"data_parallel_size": 4},
                       "cluster": {"nnodes": 1, "devices_per_node": 3}}) == (
        "cluster.devices_per_node=3: the layout needs DP 4 x PP 1 x TP 1 = 4 ranks but "
        "nnodes=1 x devices_per_node=3 gives 3 devices; set cluster.devices_per_node=4, "
        "or change the parallel sizes")


def test_world_not_divisible_by_nodes_suggests_nnodes():
    assert only_issue({"parallel": {"data_parallel_size": 2, "tensor_parallel_size": 2},
                       "cluster": {"nnodes": 3, "devices_per_node": 2}}) == (
        "cluster.devices_per_node=2: the layout needs DP 2 x PP 1 x TP 2 = 4 ranks but "
        "nnodes=3 x devices_per_node=2 gives 6 devices; set cluster.nnodes=2, "
        "or change the parallel sizes")


def test_world_fitting_neither_dimension_names_the_product():
    assert only_issue({"parallel": {"data_parallel_size": 3},
                       "cluster": {"nnodes": 2, "devices_per_node": 4}}) == (
        "cluster.devices_per_node=4: the layout needs DP 3 x PP 1 x TP 1 = 3 ranks but "
        "nnodes=2 x devices_per_node=4 gives 8 devices; make nnodes x devices_per_node = 3, "
        "or change the parallel sizes")


def test_unset_devices_per_node_is_derived_from_the_world():
    cfg = parse_config({"parallel": {"data_parallel_size": 2, "tensor_parallel_size": 4},
                        "model": LLAMA_8B, "cluster": {"nnodes": 2}})
    assert cfg.cluster.devices_per_node == 4


def test_world_that_does_not_split_over_nodes():
    issue = only_issue({"parallel": {"data_parallel_size": 3}, "cluster": {"nnodes": 2}})
    assert issue.startswith("cluster.nnodes=2: ")
    assert "DP 3 x PP 1 x TP 1 = 3 ranks does not split evenly over 2 nodes" in issue
    assert "set cluster.devices_per_node" in issue


# --- heads, kv heads and MLP width vs TP -------------------------------------------------

def test_tp_not_dividing_heads_lists_every_reason_and_the_valid_sizes():
    assert only_issue({"parallel": {"tensor_parallel_size": 3}, "model": LLAMA_8B,
                       "cluster": {"devices_per_node": 3}}) == (
        "parallel.tensor_parallel_size=3: model.num_attention_heads=32 is not divisible by 3; "
        "model.num_kv_heads=8 neither divides nor is divisible by 3; "
        "model.intermediate_size=14336 is not divisible by 3; use 1, 2, 4, 8, 16 or 32")


def test_tp_beyond_the_heads():
    issue = only_issue({"parallel": {"tensor_parallel_size": 64}, "model": LLAMA_8B,
                        "cluster": {"devices_per_node": 64}})
    assert issue.startswith("parallel.tensor_parallel_size=64: "
                            "model.num_attention_heads=32 is not divisible by 64;")
    assert issue.endswith("; use 1, 2, 4, 8, 16 or 32")


def test_kv_heads_that_neither_divide_nor_are_divisible_by_tp():
    model = {**LLAMA_8B, "num_attention_heads": 24, "num_kv_heads": 6, "hidden_size": 4608,
             "intermediate_size": 12288}
    assert only_issue({"parallel": {"tensor_parallel_size": 4}, "model": model,
                       "cluster": {"devices_per_node": 4}}) == (
        "parallel.tensor_parallel_size=4: model.num_kv_heads=6 neither divides nor is "
        "divisible by 4; use 1, 2, 3, 6, 12 or 24")


def test_intermediate_size_not_divisible_by_tp():
    model = {**LLAMA_8B, "intermediate_size": 14338}
    assert only_issue({"parallel": {"tensor_parallel_size": 4}, "model": model,
                       "cluster": {"devices_per_node": 4}}) == (
        "parallel.tensor_parallel_size=4: model.intermediate_size=14338 is not divisible "
        "by 4; use 1 or 2")


def test_fewer_kv_heads_than_tp_is_valid_when_tp_is_a_multiple():
    cfg = parse_config({"parallel": {"tensor_parallel_size": 16}, "model": LLAMA_8B,
                        "cluster": {"devices_per_node": 16}})
    assert cfg.parallel.tensor_parallel_size == 16


def test_valid_tensor_parallel_sizes_agree_with_brute_force():
    for heads, kv, inter in [(32, 8, 14336), (24, 6, 12288), (8, 1, 64), (12, 12, 36)]:
        m = ModelSpec(num_attention_heads=heads, num_kv_heads=kv, hidden_size=heads * 4,
                      intermediate_size=inter, num_experts=0)
        brute = [t for t in range(1, heads + 1) if heads % t == 0 and inter % t == 0
                 and (kv % t == 0 or t % kv == 0)]
        assert valid_tensor_parallel_sizes(m) == brute


def test_huge_head_counts_fail_fast_with_a_message():
    # Divisors are found by trial division up to sqrt(n) (capped): this once took minutes.
    issue = only_issue({"model": {"num_attention_heads": 2**40, "hidden_size": 2**41,
                                  "num_kv_heads": 3}})
    assert issue.startswith("model.num_kv_heads=3: must divide num_attention_heads="
                            f"{2**40}; use 1, 2, 4, 8,")


def test_long_suggestion_lists_keep_their_ends():
    issue = only_issue({"model": {"num_attention_heads": 10**21, "hidden_size": 2 * 10**21,
                                  "num_kv_heads": 7}})
    assert issue == (f"model.num_kv_heads=7: must divide num_attention_heads={10**21}; use "
                     f"1, 2, 4, 5, 8, 10, 16, 20, ..., {5 * 10**20} or {10**21}")


# --- bounds that keep derived data small -------------------------------------------------

def test_world_beyond_a_million_ranks_names_the_biggest_dimension():
    issues = issues_of({"parallel": {"data_parallel_size": 4, "pipeline_parallel_size": 2,
                                     "tensor_parallel_size": 1 << 18},
                        "model": {"num_layers": 4}, "cluster": {"nnodes": 1}})
    assert issues[0] == (
        f"parallel.tensor_parallel_size={1 << 18}: the layout DP 4 x PP 2 x TP {1 << 18} has "
        f"{1 << 21} ranks, more than the 1048576 a layout may have; use smaller parallel sizes")


def test_a_million_ranks_is_allowed():
    cfg = parse_config({"parallel": {"data_parallel_size": 1 << 20},
                        "model": {"num_experts": 0}})
    assert cfg.parallel.world_size == 1 << 20


def test_experts_are_bounded():
    assert only_issue({"model": {"num_experts": 10**11}}) == (
        "model.num_experts=100000000000: must be <= 65536")


# --- model shape -------------------------------------------------------------------------

def test_model_shape_rules_report_together():
    assert issues_of({"model": {"hidden_size": 65, "num_kv_heads": 3,
                                "experts_per_token": 9}}) == [
        "model.hidden_size=65: not divisible by num_attention_heads=8; use a multiple of 8",
        "model.num_kv_heads=3: must divide num_attention_heads=8; use 1, 2, 4 or 8",
        "model.experts_per_token=9: more than num_experts=8; use at most 8",
    ]


# --- layers vs PP ------------------------------------------------------------------------

def test_more_stages_than_layers():
    assert only_issue({"parallel": {"pipeline_parallel_size": 8},
                       "cluster": {"devices_per_node": 8}}) == (
        "parallel.pipeline_parallel_size=8: more stages than model.num_layers=4, so a stage "
        "would hold no layer; use at most 4")


def test_layer_partition_with_wrong_entry_count():
    assert only_issue({"parallel": {"pipeline_parallel_size": 2,
                                    "pipeline_layer_partition": [1, 2, 1]},
                       "cluster": {"devices_per_node": 2}}) == (
        "parallel.pipeline_layer_partition=[1, 2, 1]: has 3 entries but "
        "pipeline_parallel_size=2; give one per stage")


def test_layer_partition_with_wrong_sum():
    assert only_issue({"parallel": {"pipeline_parallel_size": 2,
                                    "pipeline_layer_partition": [2, 3]},
                       "cluster": {"devices_per_node": 2}}) == (
        "parallel.pipeline_layer_partition=[2, 3]: its layers add up to 5 but "
        "model.num_layers=4; make the entries sum to 4")


@pytest.mark.parametrize("parts,index,value", [([0, 4], 0, 0), ([5, -1], 1, -1)])
def test_layer_partition_with_an_empty_stage(parts, index, value):
    assert only_issue({"parallel": {"pipeline_parallel_size": 2,
                                    "pipeline_layer_partition": parts},
                       "cluster": {"devices_per_node": 2}}) == (
        f"parallel.pipeline_layer_partition.{index}={value}: must be >= 1")


def test_layer_partition_that_fits_is_used():
    cfg = parse_config({"parallel": {"pipeline_parallel_size": 2,
                                     "pipeline_layer_partition": [1, 3]},
                        "cluster": {"devices_per_node": 2}})
    assert cfg.parallel.pipeline_layer_partition == (1, 3)


# --- expert parallelism ------------------------------------------------------------------

def test_expert_parallel_on_a_dense_model():
    assert only_issue({"parallel": {"enable_expert_parallel": True}, "model": LLAMA_8B,
                       "cluster": {"devices_per_node": 1}}) == (
        "parallel.enable_expert_parallel=True: model 'llama-8b-shape' is dense "
        "(model.num_experts=0); set enable_expert_parallel=false or use a MoE model")


def test_fewer_experts_than_ep_ranks():
    assert only_issue({"parallel": {"enable_expert_parallel": True, "data_parallel_size": 4,
                                    "tensor_parallel_size": 4},
                       "cluster": {"devices_per_node": 16}}) == (
        "model.num_experts=8: the EP group has DP 4 x TP 4 = 16 ranks, so 8 of them would "
        "hold no expert; use num_experts >= 16 or a smaller DP x TP")


def test_experts_not_divisible_by_ep_size_are_fine():
    cfg = parse_config({"parallel": {"enable_expert_parallel": True, "data_parallel_size": 3},
                        "model": {"num_experts": 8}, "cluster": {"devices_per_node": 3}})
    assert cfg.parallel.ep_size == 3


def test_expert_parallel_size_is_dp_times_tp_only_when_enabled():
    on = ServingConfig.model_validate({
        "parallel": {"data_parallel_size": 2, "tensor_parallel_size": 2,
                     "enable_expert_parallel": True}, "cluster": {"devices_per_node": 4}})
    off = on.model_copy(update={"parallel": on.parallel.model_copy(
        update={"enable_expert_parallel": False})})
    assert (on.parallel.ep_size, off.parallel.ep_size) == (4, 1)


# --- data_parallel_size_local ------------------------------------------------------------

def test_data_parallel_size_local_that_disagrees_with_the_node():
    assert only_issue({"parallel": {"data_parallel_size": 2, "tensor_parallel_size": 2,
                                    "data_parallel_size_local": 3},
                       "cluster": {"devices_per_node": 4}}) == (
        "parallel.data_parallel_size_local=3: cluster.devices_per_node=4 with TP 2 x PP 1 per "
        "replica holds 2 replicas per node; use 2 or leave it null")


def test_data_parallel_size_local_when_a_replica_spans_nodes():
    assert only_issue({"parallel": {"tensor_parallel_size": 4, "data_parallel_size_local": 1},
                       "model": LLAMA_8B, "cluster": {"nnodes": 2, "devices_per_node": 2}}) == (
        "parallel.data_parallel_size_local=1: cluster.devices_per_node=2 with TP 4 x PP 1 per "
        "replica holds 0.5 replicas per node; leave it null")


# --- all problems at once ----------------------------------------------------------------

def test_all_cross_field_problems_are_reported_at_once():
    err_lines = issues_of({
        "parallel": {"tensor_parallel_size": 3, "pipeline_parallel_size": 8,
                     "enable_expert_parallel": True},
        "model": {**LLAMA_8B, "num_layers": 4}, "cluster": {"devices_per_node": 5},
    })
    assert [line.split("=")[0] for line in err_lines] == [
        "cluster.devices_per_node", "parallel.tensor_parallel_size",
        "parallel.pipeline_parallel_size", "parallel.enable_expert_parallel",
    ]


def test_field_problems_of_every_section_are_reported_at_once():
    with pytest.raises(ConfigError) as info:
        parse_config({"parallel": {"tensor_parallel_size": 0, "all2all_backend": "x"},
                      "model": {"hidden_size": 65}, "cluster": {"platfrom": "cpu"},
                      "serve": {"port": -1}}, "test.yaml")
    err = info.value
    assert [i.field for i in err.issues] == [
        "parallel.tensor_parallel_size", "parallel.all2all_backend", "cluster.platfrom",
        "serve.port", "model.hidden_size",  # the model's own rules, though fields failed
    ]
    text = err.render()
    assert text.startswith("invalid config from test.yaml: 5 problems\n  - ")
    assert "did you mean 'platform'?" in text


def test_render_of_a_single_issue():
    err = ConfigError(ConfigIssue("parallel.tensor_parallel_size", 3, "use 1, 2 or 4"),
                      "x.toml")
    assert err.render() == (
        "invalid config from x.toml: 1 problem\n  - parallel.tensor_parallel_size=3: use 1, 2 or 4")
    assert str(err) == err.render()
    assert isinstance(err, ValueError)
