"""Properties of topology resolution over random valid layouts (hypothesis).

The reference is a brute-force enumeration written here from DESIGN.md's definitions
(nested loops over dp, pp, tp; groups by bucketing coordinates), independent of core's
closed-form arithmetic.
"""

from __future__ import annotations

from collections import defaultdict
from itertools import product

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pypto_serving.core.loader import parse_config
from pypto_serving.core.placement import ExpertPlacement, layer_partition
from pypto_serving.core.topology import Topology, resolve_topology

SETTINGS = settings(max_examples=40, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


@st.composite
def valid_configs(draw):
    """A random config that validates: sizes chosen so every cross-field rule holds."""
    dp, pp, tp = (draw(st.integers(1, 4)) for _ in range(3))
    world = dp * pp * tp
    heads = tp * draw(st.integers(1, 4))
    kv = draw(st.sampled_from([d for d in range(1, heads + 1)
                               if heads % d == 0 and (d % tp == 0 or tp % d == 0)]))
    ep = draw(st.booleans())
    moe = ep or draw(st.booleans())
    experts = dp * tp + draw(st.integers(0, 7)) if moe else 0
    layers = draw(st.integers(pp, pp + 9))
    partition = None
    if pp > 1 and draw(st.booleans()):
        cuts = sorted(draw(st.sets(st.integers(1, layers - 1), min_size=pp - 1,
                                   max_size=pp - 1)))
        partition = [b - a for a, b in zip([0, *cuts], [*cuts, layers], strict=True)]
    # Node sizes that keep every TP group inside a node or spanning whole nodes.
    nnodes = draw(st.sampled_from([
        n for n in range(1, world + 1)
        if world % n == 0 and ((world // n) % tp == 0 or tp % (world // n) == 0)]))
    return parse_config({
        "parallel": {
            "data_parallel_size": dp, "pipeline_parallel_size": pp,
            "tensor_parallel_size": tp, "enable_expert_parallel": ep,
            "expert_placement_strategy": draw(st.sampled_from(["linear", "round_robin"])),
            "pipeline_layer_partition": partition,
        },
        "model": {
            "num_layers": layers, "num_attention_heads": heads, "num_kv_heads": kv,
            "hidden_size": heads * 4, "intermediate_size": tp * draw(st.integers(1, 8)),
            "num_experts": experts, "experts_per_token": 1,
            "vocab_size": draw(st.integers(tp, 300)),
        },
        "cluster": {"nnodes": nnodes, "devices_per_node": world // nnodes, "platform": "cpu"},
    })


def reference(topo: Topology):
    """Coordinates and groups by brute force: rank numbers in dp, pp, tp loop order."""
    lay = topo.layout
    coords = list(product(range(lay.dp), range(lay.pp), range(lay.tp)))  # index = rank
    keys = {"tp": lambda d, p, t: (d, p), "pp": lambda d, p, t: (d, t),
            "dp": lambda d, p, t: (p, t), "ep": lambda d, p, t: p,
            "replica": lambda d, p, t: d, "world": lambda d, p, t: 0}
    groups = {}
    for kind, key in keys.items():
        buckets = defaultdict(list)
        for rank, c in enumerate(coords):
            buckets[key(*c)].append(rank)
        groups[kind] = {r: tuple(b) for b in buckets.values() for r in b}
    return coords, groups


@SETTINGS
@given(valid_configs())
def test_groups_of_each_kind_partition_the_world(cfg):
    topo = resolve_topology(cfg)
    for kind in topo.group_kinds:
        groups = list(topo.groups(kind))
        members = [r for g in groups for r in g.ranks]
        assert sorted(members) == list(range(topo.world_size)), kind
        assert len(groups) == topo.num_groups(kind)
        assert [g.index for g in groups] == list(range(len(groups)))
        assert len({g.size for g in groups}) == 1


@SETTINGS
@given(valid_configs())
def test_tp_and_pp_group_of_a_rank_meet_only_in_it(cfg):
    topo = resolve_topology(cfg)
    for r in range(topo.world_size):
        assert set(topo.group("tp", r).ranks) & set(topo.group("pp", r).ranks) == {r}


@SETTINGS
@given(valid_configs())
def test_rank_alone_equals_its_row_of_the_brute_force_enumeration(cfg):
    topo = resolve_topology(cfg)
    coords, groups = reference(topo)
    c, lay = cfg.cluster, topo.layout
    for r in range(topo.world_size):
        info = topo.rank_info(r)
        assert (info.dp, info.pp, info.tp) == coords[r]
        assert (info.node, info.local_rank) == divmod(r, c.devices_per_node)
        assert info.is_first_stage == (info.pp == 0)
        assert info.is_last_stage == (info.pp == lay.pp - 1)
        for kind in topo.group_kinds:
            group = topo.group(kind, r)
            assert group.ranks == groups[kind][r], (kind, r)
            assert topo.group_at(kind, group.index) == group


@SETTINGS
@given(valid_configs())
def test_ep_groups_are_dp_x_tp_slices_of_one_stage(cfg):
    topo = resolve_topology(cfg)
    if "ep" not in topo.group_kinds:
        return
    lay = topo.layout
    for group in topo.groups("ep"):
        stages = {topo.rank_info(r).pp for r in group.ranks}
        assert len(stages) == 1
        (pp,) = stages
        assert group.index == pp
        # The design's formula, written out: rank = dp * PP * TP + pp * TP + tp.
        assert group.ranks == tuple(d * lay.pp * lay.tp + pp * lay.tp + t
                                    for d in range(lay.dp) for t in range(lay.tp))
        assert [topo.rank_info(r).ep for r in group.ranks] == list(range(group.size))


@SETTINGS
@given(valid_configs())
def test_every_expert_is_placed_once_per_ep_group(cfg):
    topo = resolve_topology(cfg)
    if topo.expert_placement is None:
        return
    placement = topo.expert_placement
    for group in topo.groups("ep"):
        held = [e for r in group.ranks for e in topo.rank_info(r).experts]
        assert sorted(held) == list(range(cfg.model.num_experts))
        for r in group.ranks:
            info = topo.rank_info(r)
            for i, e in enumerate(info.experts):
                assert placement.owner_of(e) == info.ep
                assert placement.local_index(e) == i


@SETTINGS
@given(valid_configs())
def test_stage_layers_partition_the_model_and_match_the_ranks(cfg):
    topo = resolve_topology(cfg)
    layers = [layer for stage in topo.stage_layers for layer in stage]
    assert layers == list(range(cfg.model.num_layers))
    for r in range(topo.world_size):
        info = topo.rank_info(r)
        assert info.layers == info.kv_cache.layers == topo.stage_layers[info.pp]
        assert info.kv_cache.replica == info.dp


@SETTINGS
@given(valid_configs())
def test_heads_kv_heads_and_vocab_shards_cover_the_model(cfg):
    topo, m = resolve_topology(cfg), cfg.model
    tp_group = topo.group("tp", 0).ranks
    infos = [topo.rank_info(r) for r in tp_group]
    assert [h for i in infos for h in i.attention_heads] == list(range(m.num_attention_heads))
    assert [v for i in infos for v in i.vocab] == list(range(m.vocab_size))
    kv = [h for i in infos for h in i.kv_cache.kv_heads]
    assert sorted(set(kv)) == list(range(m.num_kv_heads))
    assert all(kv.count(h) == infos[0].kv_cache.replicas for h in set(kv))
    group = m.num_attention_heads // m.num_kv_heads  # query heads per kv head
    for i in infos:
        assert {h // group for h in i.attention_heads} <= set(i.kv_cache.kv_heads)


@settings(max_examples=150, deadline=None)
@given(st.integers(0, 200), st.integers(1, 40), st.sampled_from(["linear", "round_robin"]))
def test_placement_places_every_expert_once_and_balanced(experts, ep_size, strategy):
    p = ExpertPlacement(experts, ep_size, strategy)
    table = p.table()
    assert sorted(e for held in table for e in held) == list(range(experts))
    sizes = [len(held) for held in table]
    assert max(sizes) - min(sizes) <= 1
    for rank, held in enumerate(table):
        for i, e in enumerate(held):
            assert (p.owner_of(e), p.local_index(e)) == (rank, i)
        if strategy == "linear":
            assert list(held) == list(range(held[0], held[0] + len(held))) if held else True
            assert len(held) == experts // ep_size + (rank < experts % ep_size)
        else:
            assert all(e % ep_size == rank for e in held)


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 500), st.integers(1, 64))
def test_even_layer_split_is_contiguous_balanced_and_front_loaded(layers, stages):
    if stages > layers:
        return
    parts = layer_partition(layers, stages, None)
    assert [x for part in parts for x in part] == list(range(layers))
    sizes = [len(p) for p in parts]
    assert sizes == sorted(sizes, reverse=True) and sizes[0] - sizes[-1] <= 1
