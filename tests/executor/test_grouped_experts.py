"""Routed experts without a host sync (executor/grouped_experts.py): the gathered and the
all-experts paths equal the sorted path, the stacked weights are the experts' own storage,
and a decode step of a MoE model, as the CUDA graphs capture it, calls no op that syncs.

On a CPU the model itself takes the sorted path (grouped_experts.sync_free), so these tests
call the sync-free paths directly, or force the CUDA choice where the whole step is run."""

from __future__ import annotations

import pytest
import torch

from pypto_serving.core.config import ModelSpec
from pypto_serving.executor import model as model_module
from pypto_serving.executor.decode_graphs import DecodeGraphs
from pypto_serving.executor.grouped_experts import MAX_SYNC_FREE_ROWS, grouped_experts
from pypto_serving.executor.kv_cache import PagedKVCache
from pypto_serving.executor.model import (
    MoE,
    build_reference_model,
    fuse_weights,
    route,
    sorted_experts,
)

from .host_sync import HostSyncs

SPEC = ModelSpec(name="t", num_layers=2, hidden_size=32, num_attention_heads=4, num_kv_heads=2,
                 intermediate_size=48, num_experts=16, experts_per_token=2, vocab_size=64,
                 max_seq_len=64)


def _moe(spec: ModelSpec = SPEC, seed: int = 0) -> MoE:
    return build_reference_model(spec, seed=seed).layers[0].ffn


def _sorted(moe: MoE, x: torch.Tensor) -> torch.Tensor:
    """The layer by the sorted path: each expert once on the rows routed to it."""
    weights, ids = route(moe.gate, x, moe.top_k, moe.renormalize)
    out = sorted_experts(x, weights, ids, moe.experts)
    return out if moe.shared is None else out + moe.shared(x)


def _grouped(moe: MoE, x: torch.Tensor) -> torch.Tensor:
    """The layer as CUDA runs a step of up to MAX_SYNC_FREE_ROWS rows."""
    weights, ids = route(moe.gate, x, moe.top_k, moe.renormalize)
    out = grouped_experts(x, weights, ids, moe.stacked)
    return out if moe.shared is None else out + moe.shared(x)


# 1-2 rows: 2-4 picks of 16 experts (at most a third), gathered; 3 to 128: every expert
@pytest.mark.parametrize("rows", [1, 2, 3, MAX_SYNC_FREE_ROWS])
@pytest.mark.parametrize("variant", ["mixtral", "qwen2-moe"])
def test_each_path_equals_the_sorted_experts(rows, variant):
    spec = SPEC if variant == "mixtral" else SPEC.model_copy(
        update={"shared_expert_intermediate_size": 40, "moe_renormalize": False})
    moe = _moe(spec)
    x = torch.randn(rows, SPEC.hidden_size, generator=torch.Generator().manual_seed(rows))
    torch.testing.assert_close(_grouped(moe, x), _sorted(moe, x), rtol=1e-5, atol=1e-6)


def test_the_stack_is_the_experts_own_storage_and_follows_a_dtype_change():
    moe = _moe()
    x = torch.randn(3, SPEC.hidden_size)
    _grouped(moe, x)
    w13, w2 = moe.stacked.weights()
    for e, expert in enumerate(moe.experts):  # views of the stack: nothing held twice
        assert expert.w1.weight.untyped_storage().data_ptr() == w13.untyped_storage().data_ptr()
        assert expert.w3.weight.data_ptr() == w13[e, SPEC.intermediate_size:].data_ptr()
        assert expert.w2.weight.data_ptr() == w2[e].data_ptr()
    moe.to(torch.float64)  # every weight replaced: stacked again from the new ones
    x = x.double()
    torch.testing.assert_close(_grouped(moe, x), _sorted(moe, x), rtol=1e-12, atol=1e-12)
    assert moe.stacked.weights()[0].dtype == torch.float64
    # the sorted path (each expert's own forward) reads the stack too: nothing re-fused
    _sorted(moe, x)
    assert moe.experts[1].w13.weight.data_ptr() == moe.stacked.weights()[0][1].data_ptr()
    # one middle expert's weight replaced (one that x is routed to): stacked again, with it
    _, ids = route(moe.gate, x, moe.top_k, moe.renormalize)
    e = next(i for i in ids.flatten().tolist() if 0 < i < len(moe.experts) - 1)
    with torch.no_grad():
        moe.experts[e].w2.weight = torch.nn.Parameter(moe.experts[e].w2.weight * 2)
    torch.testing.assert_close(_grouped(moe, x), _sorted(moe, x), rtol=1e-12, atol=1e-12)


def test_the_detector_sees_the_sorted_paths_sync():
    moe = _moe()
    x = torch.randn(3, SPEC.hidden_size)
    with HostSyncs() as syncs:
        _sorted(moe, x)
    assert "bincount" in syncs.found  # so an empty list below means something
    with HostSyncs() as syncs:
        _grouped(moe, x)
    assert syncs.found == []


@pytest.mark.parametrize("batch", [1, 3, 8])
def test_a_moe_decode_step_as_the_graphs_capture_it_never_syncs(batch, monkeypatch):
    # the MoE layers' CUDA choice (sync_free is CUDA-only; the rest of the step's code is the
    # same on both devices but for kernels that launch without a sync)
    monkeypatch.setattr(model_module, "sync_free", lambda x: x.shape[0] <= MAX_SYNC_FREE_ROWS)
    spec = SPEC.model_copy(update={"shared_expert_intermediate_size": 40})
    model = build_reference_model(spec, seed=1)
    cache = PagedKVCache(range(spec.num_layers), num_blocks=32, block_size=4,
                         num_kv_heads=spec.num_kv_heads, head_dim=spec.head_dim, scratch=True)
    graphs = DecodeGraphs(model, cache, max_batch=8, max_seq_len=spec.max_seq_len)

    class Row:  # one decode: a token at position 5 of a sequence in blocks 2r, 2r + 1
        def __init__(self, r):
            self.token_ids, self.start_pos, self.block_table = [r + 1], 5, [2 * r, 2 * r + 1]
            self.sample = True

    b = next(size for size in graphs.buckets if size >= batch)
    graphs._write([Row(r) for r in range(batch)], b)
    with torch.inference_mode(), HostSyncs() as syncs:
        logits, greedy = graphs._forward(b)
    assert syncs.found == [] and logits.shape == (b, spec.vocab_size)
    assert torch.isfinite(logits).all() and torch.equal(greedy, logits.argmax(-1))


def test_fuse_weights_stacks_only_when_asked_and_releases_after_each_layer():
    model = build_reference_model(SPEC, seed=2)
    calls = []
    fuse_weights(model, stack_experts=False, release=lambda: calls.append(1))
    assert len(calls) == SPEC.num_layers + 1
    moe = model.layers[0].ffn
    assert moe.stacked.w13 is None  # nothing stacked: the CPU's choice
    assert model.layers[0].attention.qkv._still_fused()
    fuse_weights(model, stack_experts=True)
    w13, w2 = moe.stacked.weights()
    stacked_at = w13.data_ptr()
    assert moe.experts[2].w2.weight.data_ptr() == w2[2].data_ptr()
    fuse_weights(model, stack_experts=True)  # a second time changes nothing
    assert moe.stacked.weights()[0].data_ptr() == stacked_at
    x = torch.randn(3, SPEC.hidden_size)
    torch.testing.assert_close(_grouped(moe, x), _sorted(moe, x), rtol=1e-5, atol=1e-6)
