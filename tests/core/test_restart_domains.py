"""Restart domains: which ranks must be torn down and restarted together."""

from __future__ import annotations

import pytest

from pypto_serving.core.loader import parse_config
from pypto_serving.core.topology import resolve_topology

TINY_MOE = {"name": "tiny-moe", "num_layers": 4, "hidden_size": 64, "num_attention_heads": 8,
            "num_kv_heads": 4, "intermediate_size": 128, "num_experts": 8,
            "experts_per_token": 2, "vocab_size": 256}


def topo(dp=1, pp=1, tp=1, ep=False, model=None):
    return resolve_topology(parse_config({
        "parallel": {"data_parallel_size": dp, "pipeline_parallel_size": pp,
                     "tensor_parallel_size": tp, "enable_expert_parallel": ep},
        "model": {**TINY_MOE, **(model or {})},
        "cluster": {"nnodes": 1, "devices_per_node": dp * pp * tp, "platform": "cpu"},
    }))


@pytest.mark.parametrize("dp,pp,tp,domains", [
    (2, 2, 2, [range(0, 4), range(4, 8)]),  # each DP replica: its PP x TP ranks
    (4, 1, 1, [range(0, 1), range(1, 2), range(2, 3), range(3, 4)]),
    (3, 1, 2, [range(0, 2), range(2, 4), range(4, 6)]),
    (1, 2, 2, [range(0, 4)]),  # no DP: the world
])
def test_dp_without_ep_gives_one_domain_per_replica(dp, pp, tp, domains):
    t = topo(dp=dp, pp=pp, tp=tp, ep=False)
    assert list(t.restart_domains()) == domains
    for d, domain in enumerate(t.restart_domains()):  # the replica's ranks, by core's coords
        assert {t.rank_info(r).dp for r in domain} == {d}


def test_dp_with_ep_is_one_domain_the_world():
    t = topo(dp=2, pp=1, tp=2, ep=True)
    assert t.restart_domains() == (range(4),)


def test_domains_cover_the_world_once_in_rank_order():
    t = topo(dp=8, pp=2, tp=4)
    ranks = [r for domain in t.restart_domains() for r in domain]
    assert ranks == list(range(t.world_size))
