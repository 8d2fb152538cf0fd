"""Layouts the executor tests run, as small config dicts, with fixed prompts per replica.

Imported by name by the executor tests (tests/executor is on pytest's pythonpath).
"""

from __future__ import annotations

import random

VOCAB = 102  # not divisible by 4: TP 4 vocab shards are 26, 26, 25, 25 rows


def model(moe: bool = False, **overrides) -> dict:
    spec = {
        "name": "tiny-moe" if moe else "tiny-dense",
        "num_layers": 4, "hidden_size": 64, "num_attention_heads": 8, "num_kv_heads": 2,
        "intermediate_size": 128, "num_experts": 6 if moe else 0, "experts_per_token": 2,
        "vocab_size": VOCAB, "max_seq_len": 64,
    }
    spec.update(overrides)
    return spec


def config(dp=1, tp=1, pp=1, moe=False, ep=False, parallel=None, **model_overrides) -> dict:
    par = {"data_parallel_size": dp, "tensor_parallel_size": tp,
           "pipeline_parallel_size": pp, "enable_expert_parallel": ep}
    par.update(parallel or {})
    return {
        "parallel": par,
        "model": model(moe, **model_overrides),
        "cluster": {"nnodes": 1, "devices_per_node": dp * tp * pp, "platform": "cpu"},
        "serve": {"kv_block_size": 4},
    }


def prompts(seed: int, lengths=(5, 3, 7)) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(VOCAB) for _ in range(n)] for n in lengths]


def case(name, cfg, steps=None, trace=False, lengths=((5, 3),), ref_seed=0,
         collectives=False) -> dict:
    dp = cfg["parallel"]["data_parallel_size"]
    steps = steps or [4] * dp
    return {
        "name": name, "config": cfg, "steps": steps, "trace": trace, "ref_seed": ref_seed,
        "collectives": collectives,
        "prompts": [prompts(seed=100 + r, lengths=lengths[r % len(lengths)]) for r in range(dp)],
    }


WORLD2 = [
    case("tp2-dense", config(tp=2)),
    case("pp2-uneven-1-3", config(pp=2, parallel={"pipeline_layer_partition": [1, 3]})),
    case("tp2-moe-sharded-experts", config(tp=2, moe=True)),
    case("pp2-moe", config(pp=2, moe=True, num_layers=3)),
    case("dp2-ep-idle-replica", config(dp=2, moe=True, ep=True), steps=[4, 2], trace=True,
         lengths=((5, 3), (6,))),
    case("tp2-ep-allgather", config(tp=2, moe=True, ep=True,
                                    parallel={"all2all_backend": "allgather_reducescatter"}),
         trace=True, lengths=((5, 3, 7),)),
    # weights handed in as one full state dict (seed 7), sharded by the runner
    dict(case("pp2-moe-from-state-dict", config(pp=2, moe=True), ref_seed=7), weights_seed=7),
    # a negative control: the reference gets other weights, so the comparison must fail
    case("tp2-dense-wrong-reference", config(tp=2), ref_seed=1),
]

WORLD4 = [
    case("tp4-dense", config(tp=4)),
    case("pp4-dense", config(pp=4)),
    case("pp2-tp2-dense", config(pp=2, tp=2, num_layers=5)),
    case("dp2-tp2-dense", config(dp=2, tp=2), lengths=((5, 3), (2, 6, 4))),
    case("ep4-linear-tp4", config(tp=4, moe=True, ep=True), trace=True, lengths=((5, 3, 7),)),
    case("ep4-round-robin-dp4", config(dp=4, moe=True, ep=True,
                                       parallel={"expert_placement_strategy": "round_robin"}),
         steps=[4, 3, 2, 4], trace=True, lengths=((5, 3), (4,), (2, 2), (6,))),
    case("dp2-tp2-ep-linear-8", config(dp=2, tp=2, moe=True, ep=True, num_experts=8),
         steps=[4, 2], trace=True, lengths=((5, 3), (7,)), collectives=True),
    case("dp2-tp2-ep-allgather-rr", config(
        dp=2, tp=2, moe=True, ep=True,
        parallel={"all2all_backend": "allgather_reducescatter",
                  "expert_placement_strategy": "round_robin"}),
         steps=[3, 4], trace=True, lengths=((5, 3), (7, 1))),
    case("pp2-tp2-ep", config(pp=2, tp=2, moe=True, ep=True), trace=True, collectives=True),
    case("dp2-tp2-ep-every-expert", config(dp=2, tp=2, moe=True, ep=True,
                                           experts_per_token=6),
         steps=[2, 2], trace=True, lengths=((5, 3), (4, 2))),
]
