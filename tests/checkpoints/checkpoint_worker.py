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

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "executor"))  # the shared case loop
from case_worker import run_cases  # noqa: E402

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


if __name__ == "__main__":
    run_cases(run_case)
