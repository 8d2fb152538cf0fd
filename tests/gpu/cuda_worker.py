"""Launched on a CUDA machine: NCCL init through `pypto launch`, the sharded runner on the
GPU against the single-process reference on the CPU; writes OUT/rank{R}.json."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

from pypto_serving.executor import distributed
from pypto_serving.executor.generate import greedy_generate, reference_generate
from pypto_serving.executor.model import build_reference_model
from pypto_serving.executor.runner import ReferenceModelRunner

PROMPTS = [[1, 5, 9, 2, 7], [3, 3, 8]]


def main(out: Path) -> None:
    ctx = distributed.init_distributed()
    world = distributed.get_world_group()
    total = world.all_reduce(torch.ones(4, device=ctx.device))
    runner = ReferenceModelRunner(ctx)
    runner.load_weights()
    runner.init_kv_cache()
    gen = greedy_generate(runner, PROMPTS, 6)
    ref = reference_generate(build_reference_model(ctx.model), PROMPTS, 6)
    errors = [((g.cpu() - r).abs().max() / r.abs().max()).item()
              for g, r in zip(gen.logits, ref.logits, strict=True) if g is not None]
    (out / f"rank{ctx.rank_info.rank}.json").write_text(json.dumps({
        "backend": torch.distributed.get_backend(), "device": str(ctx.device),
        "visible": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "device_count": torch.cuda.device_count(), "all_reduce": total.tolist(),
        "tokens": gen.tokens, "ref_tokens": ref.tokens, "max_rel_err": max(errors, default=0.0),
    }))
    distributed.destroy_distributed()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
