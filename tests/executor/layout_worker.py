"""Worker of the executor tests: runs several layouts of one world size in one launched job.

Usage, as a launched script: layout_worker.py CASES.json OUT_DIR

The job's own config (PYPTO_CONFIG) is the first case; every later case re-creates the
groups of its own layout on the same world (init_model_parallel). For each case this rank
runs greedy prefill + decode through the sharded runner, runs the single-process reference
on the same prompts, and writes what it saw to OUT_DIR/rank{R}.json for the test to judge.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from pypto_serving.core.loader import parse_config
from pypto_serving.core.topology import GroupUnavailableError, resolve_topology
from pypto_serving.executor import distributed
from pypto_serving.executor.ep import expert_modules
from pypto_serving.executor.generate import greedy_generate, reference_generate
from pypto_serving.executor.model import build_reference_model
from pypto_serving.executor.runner import ModelRunner, ReferenceModelRunner


def run_case(case: dict, ctx) -> dict:
    info = ctx.rank_info
    replica = info.dp
    prompts = case["prompts"][replica]
    steps = case["steps"][replica]
    runner = ReferenceModelRunner(ctx, seed=case.get("seed", 0))
    assert isinstance(runner, ModelRunner)
    runner.load_weights()
    cache = runner.init_kv_cache(case.get("num_blocks", 32))
    moes = expert_modules(runner.model)
    traces = []
    if case.get("trace"):
        for moe in moes:
            moe.trace = []
    comm: list[dict] = []

    def on_step(_i, _out):
        comm.append(distributed.comm_stats())
        distributed.reset_comm_stats()

    distributed.reset_comm_stats()
    gen = greedy_generate(runner, prompts, steps, on_step=on_step)
    if case.get("trace"):
        traces = [t for moe in moes for t in moe.trace]

    result = {
        "rank": info.rank, "dp": info.dp, "pp": info.pp, "tp": info.tp, "ep": info.ep,
        "layers": list(info.layers), "experts": list(info.experts),
        "is_last_stage": info.is_last_stage,
        "kv_cache_shape": list(cache.k.shape),
        "tokens": gen.tokens, "step_tokens": gen.step_tokens, "dummy_steps": gen.dummy_steps,
        "comm": comm, "trace": traces,
        "groups": {k: list(distributed.get_group(k).ranks) for k in ("tp", "pp", "dp", "world")},
        "ep_group": list(ctx.ep.ranks) if ctx.ep else None,
    }
    try:
        distributed.get_ep_group()
        result["ep_error"] = None
    except GroupUnavailableError as e:
        result["ep_error"] = str(e)
    if info.is_last_stage and prompts:
        ref_model = build_reference_model(ctx.model, seed=case.get("seed", 0))
        ref = reference_generate(ref_model, prompts, steps)
        result["ref_tokens"] = ref.tokens
        result["max_rel_err"] = [
            float((got - want).abs().max() / want.abs().max())
            for got, want in zip(gen.logits, ref.logits, strict=True)
        ]
    return result


def main(cases_path: str, out_dir: str) -> None:
    cases = json.loads(Path(cases_path).read_text())
    torch.set_num_threads(1)
    ctx = distributed.init_distributed()
    results = {}
    for case in cases:
        config = parse_config(case["config"], source=case["name"])
        if config != ctx.config:
            ctx = distributed.init_model_parallel(resolve_topology(config))
        results[case["name"]] = run_case(case, ctx)
        ctx.world.barrier()
    Path(out_dir, f"rank{ctx.rank}.json").write_text(json.dumps(results))
    distributed.destroy_distributed()


if __name__ == "__main__":
    main(*sys.argv[1:3])
