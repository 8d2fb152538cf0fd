"""Worker of `pypto simulate --execute`: runs each layout's real steps and records, per step,
the bytes every group counted (executor CommStats) and the step's wall time.

Usage, as a launched module: python -m pypto_serving.simulate.execute_worker RUN.json OUT_DIR

RUN.json: {"layouts": [config mapping, ...], "batch": B, "prompt_len": P, "decode_steps": S}.
Every layout has the job's world size; the first is the job's own (PYPTO_CONFIG), later ones
re-create their groups on the same world. Per layout each replica prefills B prompts of P
tokens in one step, then runs S decode steps of B sequences, every replica in lock-step (a
world barrier before each step, which no group counts). OUT_DIR/rank{R}.json gets the records.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from ..core.loader import parse_config
from ..core.topology import resolve_topology
from ..executor import distributed
from ..executor.batch import DecodeBatch, PrefillBatch
from ..executor.kv_cache import BlockAllocator, blocks_needed
from ..executor.runner import ReferenceModelRunner

WARMUP_DECODE_STEPS = 2


def _prompts(replica: int, batch: int, length: int, vocab: int) -> list[list[int]]:
    """Fixed prompts per replica (the same on every rank of the replica)."""
    return [[(replica * 7919 + s * 104729 + t * 31) % vocab for t in range(length)]
            for s in range(batch)]


def _timed(ctx, call) -> tuple[float, object]:
    ctx.world.barrier()
    start = time.perf_counter()
    out = call()
    return time.perf_counter() - start, out


def run_layout(ctx, topo, batch: int, prompt_len: int, decode_steps: int) -> dict:
    info = ctx.rank_info
    spec = ctx.model
    runner = ReferenceModelRunner(ctx, seed=0)
    runner.load_weights()
    block = ctx.kv_block_size
    total = prompt_len + WARMUP_DECODE_STEPS + decode_steps + 1
    cache = runner.init_kv_cache(batch * blocks_needed(total, block))
    allocator = BlockAllocator(cache.num_blocks)
    prompts = _prompts(info.dp, batch, prompt_len, spec.vocab_size)
    tables = [allocator.grow([], prompt_len, block) for _ in prompts]
    runner.warmup()
    steps = []
    distributed.reset_comm_stats()
    seconds, out = _timed(ctx, lambda: runner.run_prefill(
        PrefillBatch(token_ids=prompts, block_tables=tables)))
    steps.append({"phase": "prefill", "tokens": batch * prompt_len, "seqs": batch,
                  "seconds": seconds, "comm": distributed.comm_stats()})
    last, length = out.next_tokens, prompt_len
    for i in range(WARMUP_DECODE_STEPS + decode_steps):
        for table in tables:
            allocator.grow(table, length + 1, block)
        distributed.reset_comm_stats()
        batch_in = DecodeBatch(token_ids=last, positions=[length] * batch, block_tables=tables)
        seconds, out = _timed(ctx, lambda b=batch_in: runner.run_decode(b))
        if i >= WARMUP_DECODE_STEPS:
            steps.append({"phase": "decode", "tokens": batch, "seqs": batch,
                          "context": length + 1, "seconds": seconds,
                          "comm": distributed.comm_stats()})
        last, length = out.next_tokens, length + 1
    groups = {kind: distributed.get_group(kind).index for kind in topo.group_kinds}
    return {"rank": info.rank, "dp": info.dp, "pp": info.pp, "tp": info.tp,
            "groups": groups, "steps": steps}


def main(run_path: str, out_dir: str) -> None:
    run = json.loads(Path(run_path).read_text())
    torch.set_num_threads(1)
    ctx = distributed.init_distributed()
    results = []
    for data in run["layouts"]:
        config = parse_config(data)
        topo = resolve_topology(config)
        if config != ctx.config:
            ctx = distributed.init_model_parallel(topo)
        results.append(run_layout(ctx, topo, run["batch"], run["prompt_len"], run["decode_steps"]))
        ctx.world.barrier()
    Path(out_dir, f"rank{ctx.rank}.json").write_text(json.dumps(results))
    distributed.destroy_distributed()


if __name__ == "__main__":
    main(*sys.argv[1:3])
