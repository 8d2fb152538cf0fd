"""Bytes per rank from core's formula, checked against hand counts of the design's shapes."""

from __future__ import annotations

from pypto_serving.core.loader import parse_config
from pypto_serving.core.memory import kv_blocks_for_budget, kv_bytes_per_token, weight_bytes
from pypto_serving.core.topology import resolve_topology


def _topo(dp=1, tp=1, pp=1, experts=0, ep=False, dtype="float32"):
    return resolve_topology(parse_config({
        "parallel": {"data_parallel_size": dp, "tensor_parallel_size": tp,
                     "pipeline_parallel_size": pp, "enable_expert_parallel": ep},
        "model": {"num_layers": 4, "hidden_size": 64, "num_attention_heads": 8,
                  "num_kv_heads": 2, "intermediate_size": 128, "num_experts": experts,
                  "vocab_size": 100, "dtype": dtype},
        "cluster": {"platform": "cpu"},
    }))


def test_kv_bytes_per_token_is_layers_x_kv_heads_x_head_dim_x_2_x_dtype():
    one = _topo()
    assert kv_bytes_per_token(one.rank_info(0), one.config.model) == 4 * 2 * 8 * 2 * 4
    pp2 = _topo(pp=2, dtype="bfloat16")  # 2 layers per stage, 2 bytes per value
    assert kv_bytes_per_token(pp2.rank_info(1), pp2.config.model) == 2 * 2 * 8 * 2 * 2
    tp4 = _topo(tp=4)  # 2 KV heads over 4 ranks: each caches one (replicated twice)
    assert kv_bytes_per_token(tp4.rank_info(3), tp4.config.model) == 4 * 1 * 8 * 2 * 4


def test_kv_blocks_for_budget_counts_whole_blocks():
    t = _topo()
    per_block = 512 * 4  # bytes per token x block size 4
    assert kv_blocks_for_budget(t.rank_info(0), t.config.model, 4, per_block * 10 + 7) == 10


def test_weight_bytes_of_one_rank_is_the_whole_model():
    t = _topo()
    h, layer = 64, 2 * 64 + 2 * (64 * 64) + 2 * (16 * 64) + 3 * 64 * 128
    want = (100 * h + 100 * h + h + 4 * layer) * 4
    assert weight_bytes(t.rank_info(0), t.config.model, False) == want


def test_weight_bytes_split_over_tp_and_ep():
    dense = _topo()
    tp2 = _topo(tp=2)
    full = weight_bytes(dense.rank_info(0), dense.config.model, False)
    halves = [weight_bytes(tp2.rank_info(r), tp2.config.model, False) for r in (0, 1)]
    norms = (4 * 2 * 64 + 64) * 4  # replicated on each TP rank
    assert sum(halves) == full + norms
    moe = _topo(dp=2, experts=4, ep=True)
    one = _topo(experts=4)
    per_rank = [weight_bytes(moe.rank_info(r), moe.config.model, True) for r in (0, 1)]
    expert = 3 * 64 * 128 * 4
    # each EP rank holds 2 of the 4 experts, everything else is a full copy
    assert per_rank[0] == per_rank[1] == weight_bytes(one.rank_info(0), one.config.model,
                                                      False) - 4 * 2 * expert
