"""Topology resolution on small layouts whose answers are written out by hand from DESIGN.md."""

from __future__ import annotations

import pytest

from pypto_serving.core.layout import Layout, UnknownGroupError
from pypto_serving.core.loader import parse_config
from pypto_serving.core.placement import (
    ExpertPlacement,
    head_shard,
    kv_head_shard,
    layer_partition,
    vocab_shard,
)
from pypto_serving.core.topology import GroupUnavailableError, resolve_topology

TINY_MOE = {"name": "tiny-moe", "num_layers": 4, "hidden_size": 64, "num_attention_heads": 8,
            "num_kv_heads": 4, "intermediate_size": 128, "num_experts": 8,
            "experts_per_token": 2, "vocab_size": 256}


def topo(dp=1, pp=1, tp=1, ep=False, model=None, nnodes=1, platform="cpu", **parallel):
    model = {**TINY_MOE, **(model or {})}
    world = dp * pp * tp
    return resolve_topology(parse_config({
        "parallel": {"data_parallel_size": dp, "pipeline_parallel_size": pp,
                     "tensor_parallel_size": tp, "enable_expert_parallel": ep, **parallel},
        "model": model,
        "cluster": {"nnodes": nnodes, "devices_per_node": world // nnodes,
                    "platform": platform},
    }))


# --- DP 2 x PP 2 x TP 2 + EP on two 4-device nodes, written out by hand -------------------

@pytest.fixture(scope="module")
def t8():
    return topo(dp=2, pp=2, tp=2, ep=True, nnodes=2)


@pytest.mark.parametrize("kind,groups", [
    ("tp", [(0, 1), (2, 3), (4, 5), (6, 7)]),
    ("pp", [(0, 2), (1, 3), (4, 6), (5, 7)]),
    ("dp", [(0, 4), (1, 5), (2, 6), (3, 7)]),
    ("ep", [(0, 1, 4, 5), (2, 3, 6, 7)]),
    ("replica", [(0, 1, 2, 3), (4, 5, 6, 7)]),
    ("world", [tuple(range(8))]),
])
def test_groups_of_each_kind(t8, kind, groups):
    assert [g.ranks for g in t8.groups(kind)] == groups
    assert t8.num_groups(kind) == len(groups)
    assert [t8.group_at(kind, i).ranks for i in range(len(groups))] == groups


def test_group_kinds_in_creation_order(t8):
    assert t8.group_kinds == ("tp", "pp", "dp", "ep", "replica", "world")
    assert "ep" not in topo(dp=2, tp=2).group_kinds


def test_coordinates_follow_the_design_formula(t8):
    for r in range(8):
        info = t8.rank_info(r)
        assert (info.tp, info.pp, info.dp) == (r % 2, (r // 2) % 2, r // 4)
        assert (info.node, info.local_rank, info.device) == (r // 4, r % 4, f"cpu:{r % 4}")
        assert info.ep == info.dp * 2 + info.tp


def test_rank_5_holds_what_the_design_says(t8):
    info = t8.rank_info(5)
    assert info.to_dict() == {
        "rank": 5, "node": 1, "local_rank": 1, "device": "cpu:1",
        "dp": 1, "pp": 0, "tp": 1, "ep": 3,
        "layers": [0, 2], "attention_heads": [4, 8], "mlp_columns": [64, 128], "experts": [6, 7],
        "vocab": [128, 256],
        "kv_cache": {"replica": 1, "layers": [0, 2], "kv_heads": [2, 4], "replicas": 1},
        "is_first_stage": True, "is_last_stage": False,
    }


def test_group_positions_and_stage_neighbours(t8):
    pp = t8.group("pp", 5)
    assert pp.ranks == (5, 7) and pp.rank_in_group(7) == 1
    assert (pp.prev_rank(5), pp.next_rank(5)) == (None, 7)
    assert (pp.prev_rank(7), pp.next_rank(7)) == (5, None)
    ep = t8.group("ep", 6)
    assert ep.index == 1 and ep.rank_in_group(6) == t8.rank_info(6).ep == 2
    with pytest.raises(ValueError, match="rank 2 is not in pp group 3"):
        pp.rank_in_group(2)


def test_out_of_range_lookups(t8):
    with pytest.raises(IndexError, match=r"rank 8 is outside the world \(0..7\)"):
        t8.rank_info(8)
    with pytest.raises(IndexError, match=r"rank -1 is outside"):
        t8.group("tp", -1)
    with pytest.raises(IndexError, match=r"tp group 4 does not exist \(0..3\)"):
        t8.group_at("tp", 4)


def test_unknown_and_unavailable_group_kinds(t8):
    with pytest.raises(UnknownGroupError, match="unknown group kind 'cp'; known kinds: tp, pp"):
        t8.group("cp", 0)
    with pytest.raises(GroupUnavailableError, match="no EP group: .*enable_expert_parallel"):
        topo(dp=2).group("ep", 0)
    dense = topo(dp=2, model={"num_experts": 0})
    with pytest.raises(GroupUnavailableError, match="model 'tiny-moe' is dense"):
        dense.num_groups("ep")


# --- what each rank holds ----------------------------------------------------------------

def test_moe_without_ep_holds_every_expert_and_dense_holds_none():
    assert topo(tp=2).rank_info(1).experts == tuple(range(8))
    assert topo(tp=2).rank_info(1).ep is None
    assert topo(tp=2, model={"num_experts": 0}).rank_info(1).experts == ()


def test_kv_heads_fewer_than_tp_are_replicated():
    t = topo(tp=8, model={"num_kv_heads": 2})
    shards = [t.rank_info(r).kv_cache for r in range(8)]
    assert [(s.kv_heads.start, s.kv_heads.stop) for s in shards] == [(0, 1)] * 4 + [(1, 2)] * 4
    assert {s.replicas for s in shards} == {4}
    # Each rank's query heads use exactly the kv head it caches (GQA group of 4).
    for r in range(8):
        info = t.rank_info(r)
        assert {h // 4 for h in info.attention_heads} == set(info.kv_cache.kv_heads)


def test_kv_heads_split_when_at_least_tp():
    t = topo(tp=2)
    assert [t.rank_info(r).kv_cache.kv_heads for r in range(2)] == [range(0, 2), range(2, 4)]
    assert t.rank_info(0).kv_cache.replicas == 1


def test_kv_cache_is_owned_per_replica_and_stage():
    t = topo(dp=2, pp=2, model={"num_layers": 5})
    owners = [(t.rank_info(r).kv_cache.replica, t.rank_info(r).kv_cache.layers)
              for r in range(4)]
    assert owners == [(0, range(0, 3)), (0, range(3, 5)), (1, range(0, 3)), (1, range(3, 5))]


def test_vocab_lives_on_first_and_last_stage_only():
    t = topo(pp=3, tp=2, model={"num_layers": 6, "vocab_size": 255})
    vocab = [t.rank_info(r).vocab for r in range(6)]
    assert vocab == [range(0, 128), range(128, 255), range(0), range(0),
                     range(0, 128), range(128, 255)]
    firsts = [t.rank_info(r).is_first_stage for r in range(6)]
    lasts = [t.rank_info(r).is_last_stage for r in range(6)]
    assert firsts == [True, True, False, False, False, False]
    assert lasts == [False, False, False, False, True, True]


def test_auto_platform_names_a_generic_device():
    assert topo(dp=2, platform="auto").rank_info(1).device == "device:1"


def test_explicit_layer_partition_reaches_the_ranks():
    t = topo(pp=2, model={"num_layers": 16}, pipeline_layer_partition=[7, 9])
    assert t.stage_layers == (range(0, 7), range(7, 16))
    assert t.rank_info(1).layers == range(7, 16)


def test_ranks_iterator_is_bounded():
    t = topo(dp=4)
    assert [i.rank for i in t.ranks(1, 3)] == [1, 2]
    assert [i.rank for i in t.ranks(2, 99)] == [2, 3]


# --- placement functions -----------------------------------------------------------------

def test_even_layer_split_gives_the_remainder_to_the_earliest_stages():
    assert layer_partition(10, 4, None) == [range(0, 3), range(3, 6), range(6, 8),
                                            range(8, 10)]
    assert layer_partition(32, 2, None) == [range(0, 16), range(16, 32)]
    assert layer_partition(4, 2, (1, 3)) == [range(0, 1), range(1, 4)]


def test_ten_experts_on_four_ranks():
    linear = ExpertPlacement(10, 4, "linear")
    assert linear.table() == [(0, 1, 2), (3, 4, 5), (6, 7), (8, 9)]
    robin = ExpertPlacement(10, 4, "round_robin")
    assert robin.table() == [(0, 4, 8), (1, 5, 9), (2, 6), (3, 7)]
    assert (linear.owner_of(7), linear.local_index(7)) == (2, 1)
    assert (robin.owner_of(7), robin.local_index(7)) == (3, 1)


def test_expert_placement_rejects_bad_arguments():
    with pytest.raises(ValueError, match="unknown expert placement strategy 'random'"):
        ExpertPlacement(8, 2, "random")
    with pytest.raises(ValueError, match="ep_size >= 1"):
        ExpertPlacement(8, 0)
    with pytest.raises(IndexError, match=r"expert 8 does not exist \(0..7\)"):
        ExpertPlacement(8, 2).owner_of(8)
    with pytest.raises(IndexError, match=r"EP rank 2 is outside the EP group \(0..1\)"):
        ExpertPlacement(8, 2).experts_of(2)


def test_head_and_vocab_shards():
    assert [head_shard(32, 4, r) for r in range(4)] == [range(0, 8), range(8, 16),
                                                         range(16, 24), range(24, 32)]
    assert [kv_head_shard(2, 4, r) for r in range(4)] == [range(0, 1)] * 2 + [range(1, 2)] * 2
    assert [vocab_shard(10, 4, r) for r in range(4)] == [range(0, 3), range(3, 6),
                                                          range(6, 8), range(8, 10)]


def test_layout_rejects_sizes_below_one():
    with pytest.raises(ValueError, match="layout size pp=0 must be an integer >= 1"):
        Layout(dp=2, pp=0, tp=2)


def test_million_rank_layout_answers_without_enumerating():
    t = topo(dp=4096, pp=16, tp=16, ep=True, nnodes=131072,
             model={"num_layers": 16, "num_attention_heads": 16, "hidden_size": 2048,
                    "num_kv_heads": 4, "intermediate_size": 1024, "num_experts": 65536})
    assert t.world_size == 1 << 20
    info = t.rank_info(1_000_003)
    assert (info.dp, info.pp, info.tp) == (3906, 4, 3)
    assert info.ep == 3906 * 16 + 3 and info.experts == (info.ep,)
    ep = t.group("ep", 1_000_003)
    assert ep.size == 65536 and ep.rank_in_group(1_000_003) == info.ep
    assert ep.ranks[:3] == (64, 65, 66)  # stage 4 of replica 0 starts at rank 4 * 16
