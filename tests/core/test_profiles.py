"""Every shipped profile and model shape validates, and says what its name promises."""

from __future__ import annotations

import pytest

from pypto_serving.core.loader import (
    load_profile,
    model_profile,
    model_profile_names,
    profile_data,
    profile_names,
)
from pypto_serving.core.topology import resolve_topology

REQUIRED_PROFILES = {"cpu-demo", "tp8-one-node", "dp2-tp4-ep-two-nodes", "pp2-tp4",
                     "dp4-tp2-ep", "two-node-16"}
REQUIRED_MODELS = {"small-moe", "small-dense", "tiny-moe", "llama-8b-shape",
                   "mixtral-8x7b-shape"}

# name -> (DP, PP, TP, EP size, nnodes, devices_per_node)
LAYOUTS = {
    "cpu-demo": (2, 1, 2, 4, 1, 4),
    "tp8-one-node": (1, 1, 8, 1, 1, 8),
    "dp2-tp4-ep-two-nodes": (2, 1, 4, 8, 2, 4),
    "pp2-tp4": (1, 2, 4, 1, 1, 8),
    "dp4-tp2-ep": (4, 1, 2, 8, 1, 8),
    "two-node-16": (2, 2, 4, 8, 2, 8),
}


def test_the_required_profiles_and_models_ship():
    assert REQUIRED_PROFILES <= set(profile_names())
    assert REQUIRED_MODELS <= set(model_profile_names())


@pytest.mark.parametrize("name", profile_names())
def test_profile_validates_resolves_and_is_documented(name):
    cfg = load_profile(name)
    topo = resolve_topology(cfg)
    last = topo.rank_info(topo.world_size - 1)
    assert last.node == cfg.cluster.nnodes - 1  # the cluster is exactly full
    assert last.is_last_stage
    first_line = _path(name).read_text().splitlines()[0]
    assert first_line.startswith("# ") and len(first_line) > 20  # says what it is


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_profile_layout_matches_its_name(name):
    cfg = load_profile(name)
    p, c = cfg.parallel, cfg.cluster
    assert (p.data_parallel_size, p.pipeline_parallel_size, p.tensor_parallel_size,
            p.ep_size, c.nnodes, c.devices_per_node) == LAYOUTS[name]


@pytest.mark.parametrize("name", model_profile_names())
def test_model_profile_validates_and_is_named_after_its_file(name):
    model = model_profile(name)
    assert model.name == name
    assert model.hidden_size % model.num_attention_heads == 0


@pytest.mark.parametrize("name", profile_names())
def test_profile_model_equals_the_shipped_shape_of_that_name(name):
    model = load_profile(name).model
    if model.name in model_profile_names():
        assert model == model_profile(model.name)


def test_cpu_demo_keeps_its_content():
    assert profile_data("cpu-demo") == {
        "parallel": {"data_parallel_size": 2, "tensor_parallel_size": 2,
                     "enable_expert_parallel": True, "expert_placement_strategy": "linear"},
        "model": {"name": "tiny-moe", "num_layers": 4, "hidden_size": 64,
                  "num_attention_heads": 8, "num_kv_heads": 4, "intermediate_size": 128,
                  "num_experts": 8, "experts_per_token": 2, "vocab_size": 256},
        "cluster": {"nnodes": 1, "devices_per_node": 4, "platform": "cpu"},
    }


def test_two_node_16_places_one_replica_per_node_and_ep_across_nodes():
    topo = resolve_topology(load_profile("two-node-16"))
    assert {topo.rank_info(r).node for r in topo.group("tp", 0).ranks} == {0}
    assert {topo.rank_info(r).dp for r in range(8)} == {0}
    ep = topo.group("ep", 0)
    assert ep.ranks == (0, 1, 2, 3, 8, 9, 10, 11)
    assert [topo.rank_info(r).experts for r in ep.ranks] == [(e,) for e in range(8)]
    assert topo.stage_layers == (range(0, 16), range(16, 32))


def _path(name: str):
    from importlib import resources

    return resources.files("pypto_serving.profiles") / f"{name}.yaml"
