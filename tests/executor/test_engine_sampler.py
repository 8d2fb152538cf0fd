"""The sampler in one process: greedy is argmax, top-k/top-p cut what they say, a seed fixes
the draw whatever else is in the batch; and a KV budget too small names the field."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from pypto_serving.engine.sampling_params import SamplingParams
from pypto_serving.executor.sampler import Sampler, filtered_probs


def test_greedy_rows_are_argmax_exact():
    logits = torch.randn(5, 40, generator=torch.Generator().manual_seed(1))
    assert Sampler(seed=0).sample(logits, [None, SamplingParams()] * 2 + [None]) == \
        logits.argmax(-1).tolist()


def test_top_k_and_top_p_keep_only_the_tokens_they_name():
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0]])
    top2 = filtered_probs(logits, [SamplingParams(temperature=1.0, top_k=2)])
    assert (top2[0, 2:] == 0).all() and top2[0, :2].sum().item() == pytest.approx(1.0)
    probs = logits.softmax(-1)[0]  # 0.636, 0.234, 0.086, ...: 0.8 needs the first two
    nucleus = filtered_probs(logits, [SamplingParams(temperature=1.0, top_p=0.8)])
    assert (nucleus[0, 2:] == 0).all() and nucleus[0, 1] == pytest.approx(probs[1].item())
    drawn = {Sampler(seed=s).sample(logits, [SamplingParams(temperature=1.0, top_k=2)])[0]
             for s in range(40)}
    assert drawn == {0, 1}


def test_a_seeded_request_draws_the_same_token_whatever_its_batch():
    gen = torch.Generator().manual_seed(2)
    mine = torch.randn(1, 64, generator=gen)
    params = SamplingParams(temperature=1.5, seed=1234)
    alone = [Sampler(seed=9).sample(mine, [params], [i])[0] for i in range(20)]
    for i in range(20):
        others = torch.randn(3, 64, generator=gen)
        batch = torch.cat((others[:2], mine, others[2:]))
        row = Sampler(seed=i).sample(
            batch, [SamplingParams(temperature=1.0), None, params,
                    SamplingParams(temperature=0.7, seed=5)], [3, 0, i, 1])[2]
        assert row == alone[i]
    assert len(set(alone)) > 1  # the output index moves the draw: it really samples


@pytest.fixture
def one_rank(monkeypatch, port):
    """A real one-rank world (gloo, in this process) of a config with a KV byte budget."""
    from pypto_serving.core.loader import parse_config
    from pypto_serving.executor import distributed

    def start(kv_cache_bytes: int):
        config = parse_config({
            "model": {"name": "tiny", "num_layers": 2, "hidden_size": 32,
                      "num_attention_heads": 4, "num_kv_heads": 2, "intermediate_size": 64,
                      "num_experts": 0, "vocab_size": 50, "max_seq_len": 32},
            "cluster": {"devices_per_node": 1, "platform": "cpu"},
            "serve": {"kv_block_size": 4, "kv_cache_bytes": kv_cache_bytes},
        }, source="test")
        for name, value in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0",
                            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}.items():
            monkeypatch.setenv(name, value)
        return distributed.init_distributed(config)

    yield start
    distributed.destroy_distributed()


def test_the_kv_budget_gives_whole_blocks_or_names_the_field(one_rank):
    from pypto_serving.executor import distributed
    from pypto_serving.executor.kv_budget import KVBudgetError, rank_kv_blocks, replica_kv_pool

    ctx = one_rank(1000)
    per_block = 2 * 2 * 8 * 2 * 4 * 4  # layers x kv heads x head_dim x (k, v) x fp32 x block
    with pytest.raises(KVBudgetError, match=f"serve.kv_cache_bytes=1000 holds no KV block on "
                       f"rank 0 .* raise serve.kv_cache_bytes to at least {per_block}"):
        replica_kv_pool(ctx, distributed.get_cpu_group("replica"))
    serve = ctx.config.serve.model_copy(update={"kv_cache_bytes": per_block * 7 + 5})
    roomier = dataclasses.replace(ctx, config=ctx.config.model_copy(update={"serve": serve}))
    assert rank_kv_blocks(roomier) == (7, "kv_cache_bytes")
