"""Launched on one GPU: the same greedy generation with decode steps replayed from CUDA graphs
(after `warmup()`) and eagerly (no warmup), and a seeded sampled one; writes OUT/graphs.json."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from pypto_serving.executor import distributed
from pypto_serving.executor.generate import greedy_generate
from pypto_serving.executor.runner import ReferenceModelRunner

# 3 sequences (bucket 4: one padding row), prompts ending inside and at a block boundary
PROMPTS = [[1, 5, 9, 2, 7], [3, 3, 8, 1, 2, 9, 4, 4], [6]]
NEW_TOKENS = 24


def main(out: Path) -> None:
    ctx = distributed.init_distributed()
    runs = {}
    for mode in ("graphs", "eager"):
        runner = ReferenceModelRunner(ctx)
        runner.load_weights()
        runner.init_kv_cache()
        if mode == "graphs":
            runner.warmup()
        gen = greedy_generate(runner, PROMPTS, NEW_TOKENS)
        runs[mode] = {"runner": runner, "gen": gen}
    graphs = runs["graphs"]["runner"].graphs
    errors = [((g - e).abs().max() / e.abs().max()).item() for g, e in
              zip(runs["graphs"]["gen"].logits, runs["eager"]["gen"].logits, strict=True)]
    (out / "graphs.json").write_text(json.dumps({
        "eager_reason": runs["graphs"]["runner"].eager_reason,
        "buckets": graphs.buckets if graphs else None,
        "replays": graphs.replays if graphs else 0,
        "tokens": {m: r["gen"].tokens for m, r in runs.items()},
        "max_rel_err": max(errors),
    }))
    distributed.destroy_distributed()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
