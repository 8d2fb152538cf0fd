"""Worker of the checkpoint tests: every case (a layout over one checkpoint) in one launched job.

Usage, as a launched script: checkpoint_worker.py CASES.json OUT_DIR

Each case's config re-creates the groups on the same world (init_model_parallel); the rank
loads its shard of the checkpoint (model.path), runs greedy prefill + decode of its
replica's prompts, and the last stage writes tokens and per-step logits to
OUT_DIR/rank{R}.json; every rank also writes how many parameters it holds and, under EP, its
EP rank and the expert ids whose weights it loaded (per layer), and which of the modules
torch's Python meta kernels pull in (sympy, torch._dynamo: ~75 MiB) were imported by then.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from pypto_serving.core.loader import parse_config
from pypto_serving.core.topology import resolve_topology
from pypto_serving.executor import distributed
from pypto_serving.executor.generate import greedy_generate
from pypto_serving.executor.runner import ReferenceModelRunner


def run_case(case: dict, ctx) -> dict:
    runner = ReferenceModelRunner(ctx)
    runner.load_weights()
    heavy = sorted(m for m in ("sympy", "torch._dynamo") if m in sys.modules)
    runner.init_kv_cache(64)
    prompts = case["prompts"][ctx.rank_info.dp]
    gen = greedy_generate(runner, prompts, case["steps"])
    out = {"dp": ctx.rank_info.dp, "is_last_stage": ctx.is_last_stage,
           "numel": sum(p.numel() for p in runner.model.parameters()),
           "heavy_imports": heavy}
    if ctx.expert_parallel:
        held: dict[str, set[int]] = {}
        for name, _ in runner.model.named_parameters():
            parts = name.split(".")
            if "experts" in parts:
                held.setdefault(parts[1], set()).add(int(parts[parts.index("experts") + 1]))
        out["ep_rank"] = ctx.ep.rank_in_group
        out["experts"] = {layer: sorted(ids) for layer, ids in held.items()}
    if ctx.is_last_stage:
        out["tokens"] = gen.tokens
        out["logits"] = [lg.tolist() for lg in gen.logits]
    return out


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
