"""The cost model against hand-worked small cases: ring costs, bytes per group, memory,
the roofline, and node crossings (closed form vs every group enumerated)."""

from __future__ import annotations

import itertools

import pytest

from pypto_serving.core.comm_bytes import (
    OpBytes,
    ep_group_bytes,
    group_step_bytes,
    pp_rank_bytes,
    tp_rank_bytes,
)
from pypto_serving.core.cost_model import (
    Workload,
    compute_seconds,
    groups_crossing_nodes,
    layout_cost,
    op_seconds,
    shared_compute_factor,
)
from pypto_serving.core.hardware import HardwareSpec, LinkSpec
from pypto_serving.core.loader import parse_config
from pypto_serving.core.topology import resolve_topology

pytestmark = pytest.mark.timeout(60)

TINY = {"name": "tiny", "num_layers": 4, "hidden_size": 64, "num_attention_heads": 8,
        "num_kv_heads": 2, "intermediate_size": 128, "num_experts": 0,
        "experts_per_token": 2, "vocab_size": 102, "max_seq_len": 64}


def topo(dp=1, tp=1, pp=1, per_node=None, ep=False, model=None, **parallel):
    m = {**TINY, **(model or {})}
    world = dp * tp * pp
    return resolve_topology(parse_config({
        "parallel": {"data_parallel_size": dp, "tensor_parallel_size": tp,
                     "pipeline_parallel_size": pp, "enable_expert_parallel": ep, **parallel},
        "model": m,
        "cluster": {"nnodes": world // (per_node or world),
                    "devices_per_node": per_node or world, "platform": "cpu"}}))


def hw(peak_tflops=1.0, mem_gbps=1.0, overhead_us=0.0, per_node=8) -> HardwareSpec:
    return HardwareSpec(
        name="test", platform="cpu", devices_per_node=per_node,
        device={"memory_gib": 1.0, "memory_bandwidth_gbps": mem_gbps,
                "peak_tflops": {"float32": peak_tflops}},
        links={"intra_node": {"bandwidth_gbps": 10.0, "latency_us": 10.0},
               "inter_node": {"bandwidth_gbps": 1.0, "latency_us": 100.0}},
        layer_overhead_us=overhead_us)


def test_ring_costs_by_hand():
    link = LinkSpec(bandwidth_gbps=10.0, latency_us=10.0)
    mb = 1_000_000
    # all_reduce over 4: 2(n-1) = 6 latencies, 2(n-1)/n = 1.5 x the buffer
    assert op_seconds("all_reduce", 4, 1, mb, link) == pytest.approx(6e-5 + 1.5 * mb / 1e10)
    # all_gather of a 1 MB input over 4: 3 latencies, 3 MB arrive
    assert op_seconds("all_gather", 4, 1, mb, link) == pytest.approx(3e-5 + 3 * mb / 1e10)
    assert op_seconds("all_to_all", 4, 2, 2 * mb, link) == pytest.approx(
        6e-5 + 0.75 * 2 * mb / 1e10)
    assert op_seconds("send", 2, 1, mb, link) == pytest.approx(1e-5 + mb / 1e10)
    assert op_seconds("broadcast", 8, 1, mb, link) == pytest.approx(3e-5 + mb / 1e10)
    assert op_seconds("all_reduce", 1, 5, mb, link) == 0


def test_tp_bytes_by_hand():
    """TP 2, dense, 4 layers, hidden 64, float32; 5 tokens over 2 sequences: 2 all_reduces
    per layer + the embedding = 9, each 5 x 64 x 4 = 1280 bytes; the logits all_gather is
    2 seqs x 51 vocab rows x 4."""
    t = topo(tp=2)
    assert tp_rank_bytes(t, 0, 5, 2) == {"all_reduce": OpBytes(9, 9 * 1280),
                                         "all_gather": OpBytes(1, 2 * 51 * 4)}
    assert group_step_bytes(t, "tp", 0, [5], [2]) == {"all_reduce": OpBytes(18, 18 * 1280),
                                                      "all_gather": OpBytes(2, 816)}


def test_pp_bytes_by_hand():
    """PP 2: stage 0 sends 5 x 64 x 4 bytes, stage 1 receives them; both take part in the
    broadcast of 2 int64 tokens; stage 0 also runs the embedding's TP reduce (none at TP 1)."""
    t = topo(pp=2)
    assert pp_rank_bytes(t, 0, 5, 2) == {"send": OpBytes(1, 1280), "broadcast": OpBytes(1, 16)}
    assert pp_rank_bytes(t, 1, 5, 2) == {"recv": OpBytes(1, 1280), "broadcast": OpBytes(1, 16)}
    assert group_step_bytes(t, "pp", 0, [5], [2]) == {
        "send": OpBytes(1, 1280), "recv": OpBytes(1, 1280), "broadcast": OpBytes(2, 32)}
    assert tp_rank_bytes(t, 0, 5, 2) == {}


def test_ep_bytes_by_hand():
    """DP 2 x EP 2, 6 experts top-2, replicas of 3 and 2 tokens: 10 routed rows per layer.
    Per layer: split sizes 2 x 2 x 8 = 32, rows out 10 x (256 + 16), rows back 10 x 256."""
    t = topo(dp=2, ep=True, model={"num_experts": 6})
    per_layer = 32 + 10 * 272 + 10 * 256
    assert ep_group_bytes(t, 0, [3, 2]) == {"all_to_all": OpBytes(3 * 4 * 2, 4 * per_layer)}
    # allgather_reducescatter: width = the largest slice, 3 rows; per rank and layer a count
    # (8), 3 rows x (256 + 2 x 8 ids + 2 x 4 weights), and a reduce_scatter of 2 x 3 x 256
    t = topo(dp=2, ep=True, model={"num_experts": 6}, all2all_backend="allgather_reducescatter")
    got = ep_group_bytes(t, 0, [3, 2])
    assert got["all_gather"] == OpBytes(2 * 4 * 2, 2 * 4 * (8 + 3 * (256 + 16 + 8)))
    assert got["reduce_scatter"] == OpBytes(4 * 2, 2 * 4 * 2 * 3 * 256)
    # under EP the TP all_reduce after the MoE becomes a gather of ceil(tokens / TP) rows
    t = topo(tp=2, ep=True, model={"num_experts": 6})
    assert tp_rank_bytes(t, 0, 5, 2) == {"all_reduce": OpBytes(5, 5 * 1280),
                                         "all_gather": OpBytes(5, 4 * 3 * 256 + 2 * 51 * 4)}


def test_roofline_by_hand():
    """One dense layer, hidden 64, 8 heads = 8 KV heads of 8, MLP 128, vocab 256, float32,
    one token attending to one: FLOPs 2 x 64 x 8 x 32 (projections) + 4 x 8 x 8 (scores)
    + 2 x 3 x 64 x 128 (MLP) + 2 x 64 x 256 (LM head) = 114,944; bytes 65,536 (attention)
    + 98,304 (MLP) + 512 (KV read) + 65,536 (LM head) = 229,888: at 1 GB/s memory-bound."""
    t = topo(model={"num_layers": 1, "num_kv_heads": 8, "vocab_size": 256})
    fast_flops = hw(peak_tflops=1.0, mem_gbps=1.0)
    assert compute_seconds(t, fast_flops, 0, 1, 1, 1, 1) == pytest.approx(229_888 / 1e9)
    slow_flops = hw(peak_tflops=1e-9, mem_gbps=1e6, overhead_us=5.0)  # 1 kFLOP/s
    assert compute_seconds(t, slow_flops, 0, 1, 1, 1, 1) == pytest.approx(114_944 / 1e3 + 5e-6)


def test_memory_by_hand():
    """TP 2 of the tiny dense model: per rank 51 embedding + 51 head rows + the final norm,
    and per layer two norms, 4 query + 1 KV head of 8 (wq, wo, wk, wv) and 64 MLP columns."""
    t = topo(tp=2)
    params = 2 * 51 * 64 + 64 + 4 * (2 * 64 + 2 * 32 * 64 + 2 * 8 * 64 + 3 * 64 * 64)
    cost = layout_cost(t.config, hw(), Workload(batch=2, context=10, prompt_len=4))
    m = cost.memory
    assert m.weight_bytes == params * 4
    assert m.kv_bytes_per_token == 4 * 1 * 8 * 2 * 4  # layers x kv heads x d x (k, v) x 4
    assert m.budget_bytes == int((1 << 30) * 0.9)
    assert m.kv_capacity_tokens == (m.budget_bytes - m.weight_bytes) // m.kv_bytes_per_token
    assert m.headroom_bytes == m.budget_bytes - m.weight_bytes - 20 * m.kv_bytes_per_token


def _crossing_by_enumeration(t, kind: str) -> int:
    per = t.config.cluster.devices_per_node
    return sum(len({r // per for r in g.ranks}) > 1 for g in t.groups(kind))


@pytest.mark.parametrize("dp,pp,tp,per_node", [
    (dp, pp, tp, per) for dp, pp, tp in itertools.product((1, 2, 3, 4), (1, 2, 3), (1, 2, 4, 8))
    for per in (1, 2, 4, 6, 8, 12) if (dp * pp * tp) % per == 0
    and (per % tp == 0 or tp % per == 0)])
def test_node_crossings_closed_form_equals_enumeration(dp, pp, tp, per_node):
    t = topo(dp=dp, tp=tp, pp=pp, per_node=per_node, ep=dp * tp <= 6,
             model={"num_experts": 6, "num_layers": 6, "num_attention_heads": 8,
                    "num_kv_heads": 8, "intermediate_size": 128})
    for kind in t.group_kinds:
        assert groups_crossing_nodes(t, kind) == _crossing_by_enumeration(t, kind), kind


@pytest.mark.parametrize("dp,pp,tp,factor", [(4, 1, 1, 2.0), (1, 4, 1, 1.0), (1, 2, 2, 1.0),
                                             (1, 1, 4, 2.0), (2, 1, 2, 2.0)])
def test_ranks_sharing_two_cores_compute_slower_unless_they_take_turns(dp, pp, tp, factor):
    """4 ranks on a host of 2 cores: all 4 busy at once run at half speed; the stages of a
    pipeline take turns, so PP 4 runs at full speed and PP 2 fills the 2 cores."""
    t = topo(dp=dp, tp=tp, pp=pp)
    shared = hw(per_node=4).model_copy(update={"compute_slots_per_node": 2})
    assert shared_compute_factor(t, shared) == factor
    assert shared_compute_factor(t, hw(per_node=4)) == 1.0
    work = Workload(batch=2, context=8, prompt_len=4)
    alone = layout_cost(t.config, hw(per_node=4), work).decode
    assert layout_cost(t.config, shared, work).decode.compute_seconds == pytest.approx(
        factor * alone.compute_seconds)
