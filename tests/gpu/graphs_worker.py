"""Launched on one GPU: the same greedy generation with decode steps replayed from CUDA graphs
(after `warmup()`) and eagerly (no warmup), of 3 prompts and of one (batch 1: the GEMV
kernels in 16 bits); writes OUT/graphs.json."""

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
    replays = graphs.replays if graphs else 0
    one = {mode: greedy_generate(r["runner"], PROMPTS[:1], NEW_TOKENS) for mode, r in runs.items()}
    tokens = {mode: gen.tokens[0] for mode, gen in one.items()}
    # logits compared up to the first step whose token differs (its inputs were the same)
    same = next((i for i, (a, b) in enumerate(zip(*tokens.values(), strict=True)) if a != b),
                NEW_TOKENS - 1)
    one_errors = [((g - e).abs().max() / e.abs().max()).item() for g, e in
                  zip(one["graphs"].logits[:same + 1], one["eager"].logits[:same + 1],
                      strict=True)]
    (out / "graphs.json").write_text(json.dumps({
        "eager_reason": runs["graphs"]["runner"].eager_reason,
        "buckets": graphs.buckets if graphs else None,
        "replays": replays,
        "tokens": {m: r["gen"].tokens for m, r in runs.items()},
        "max_rel_err": max(errors),
        "one": {"replays": (graphs.replays if graphs else 0) - replays, "tokens": tokens,
                "max_rel_err": max(one_errors),
                # each graph step's token (the graph's argmax) is its logits' argmax
                "argmax_agrees": all(int(lg[0].argmax()) == t for lg, t in
                                     zip(one["graphs"].logits, tokens["graphs"], strict=True))},
    }))
    distributed.destroy_distributed()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
