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
NEW_TOKENS = 6


def main(out: Path) -> None:
    ctx = distributed.init_distributed()
    world = distributed.get_world_group()
    total = world.all_reduce(torch.ones(4, device=ctx.device))
    runner = ReferenceModelRunner(ctx)
    runner.load_weights()
    runner.init_kv_cache()
    gen = greedy_generate(runner, PROMPTS, NEW_TOKENS)
    ref = reference_generate(build_reference_model(ctx.model), PROMPTS, NEW_TOKENS)
    with_logits = [(g, r) for g, r in zip(gen.logits, ref.logits, strict=True) if g is not None]
    errors = [((g.cpu() - r).abs().max() / r.abs().max()).item() for g, r in with_logits]
    (out / f"rank{ctx.rank_info.rank}.json").write_text(json.dumps({
        "backend": torch.distributed.get_backend(), "device": str(ctx.device),
        "current_device": torch.cuda.current_device(),
        "pypto_device": os.environ.get("PYPTO_DEVICE"), "local_rank": int(os.environ["LOCAL_RANK"]),
        "visible": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "device_count": torch.cuda.device_count(), "all_reduce": total.tolist(),
        "is_last_stage": ctx.is_last_stage, "steps_with_logits": len(errors),
        "tokens": gen.tokens, "ref_tokens": ref.tokens,
        "max_rel_err": max(errors) if errors else None,
    }))
    distributed.destroy_distributed()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
