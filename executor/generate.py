"""Greedy generation for one replica: prefill, then decode steps, with block tables.

A minimal stand-in for the replica engine (the `pypto serve` issue builds the real
scheduler on the same runner calls). Used by the tests and scripts/bench_executor.py.
Under DP + EP a replica that has finished keeps running dummy steps while any other replica
still works, so the MoE all2all of the others never waits on it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .batch import DecodeBatch, PrefillBatch, StepOutput, check_max_seq_len
from .context import ParallelContext
from .errors import SequenceTooLongError
from .kv_cache import BlockAllocator
from .model import Transformer, sequence_metadata
from .runner import ModelRunner


@dataclass
class Generation:
    """What one replica produced: new tokens per sequence and per-step records."""

    tokens: list[list[int]]
    logits: list[torch.Tensor | None] = field(default_factory=list)
    """Last-token logits [seqs, vocab] of each real step (None off the last PP stage)."""
    step_seconds: list[float] = field(default_factory=list)
    step_tokens: list[int] = field(default_factory=list)
    """Tokens the model processed in each real step (prompt tokens, then one per sequence)."""
    dummy_steps: int = 0


def any_replica_busy(ctx: ParallelContext, busy: bool) -> bool:
    """Whether any DP replica has work this step: a SUM all_reduce of 0/1 busy flags over
    the DP group, non-zero when at least one replica is busy."""
    flag = torch.tensor([int(busy)], dtype=torch.long, device=ctx.device)
    return bool(ctx.dp.all_reduce(flag).item())


def greedy_generate(
    runner: ModelRunner,
    prompts: list[list[int]],
    max_new_tokens: int,
    allocator: BlockAllocator | None = None,
    on_step: Callable[[int, StepOutput], None] | None = None,
) -> Generation:
    """Prefill `prompts`, then decode until each has `max_new_tokens` new tokens.

    With no prompts the replica is idle from the start (it only runs dummy steps while
    others work, when that is needed). `on_step(i, output)` runs after each real step.
    A request that would need a position at or beyond model.max_seq_len is refused before
    any step runs; under DP + EP the refusing replica first runs dummy steps while the others
    finish, so no replica is left waiting in an all2all.
    """
    ctx = runner.ctx
    must_sync = ctx.expert_parallel and ctx.dp.world_size > 1
    refused: SequenceTooLongError | None = None
    try:
        _check_request(prompts, max_new_tokens, ctx.model.max_seq_len)
    except SequenceTooLongError as e:
        if not must_sync:
            raise
        # The other replicas' MoE all2all needs this one: stay in step as an idle replica
        # (dummy steps) and refuse the request once they are done, instead of leaving them
        # waiting in a collective until the communication timeout.
        refused, prompts = e, []
    block_size = ctx.kv_block_size
    if runner.kv_cache is None:
        runner.init_kv_cache()
    allocator = allocator or BlockAllocator(runner.kv_cache.num_blocks)
    tables = [allocator.grow([], len(p), block_size) for p in prompts]
    out = Generation(tokens=[[] for _ in prompts])
    lengths = [len(p) for p in prompts]
    steps = max_new_tokens if prompts else 0
    step = 0
    while True:
        busy = step < steps
        if must_sync:
            if not any_replica_busy(ctx, busy):
                break
        elif not busy:
            break
        if not busy:
            runner.run_dummy()
            out.dummy_steps += 1
            step += 1
            continue
        start = time.perf_counter()
        if step == 0:
            result = runner.run_prefill(PrefillBatch(token_ids=prompts, block_tables=tables))
            out.step_tokens.append(sum(lengths))
        else:
            last = [seq[-1] for seq in out.tokens]
            for i, table in enumerate(tables):
                allocator.grow(table, lengths[i] + 1, block_size)
            result = runner.run_decode(DecodeBatch(token_ids=last, positions=list(lengths),
                                                   block_tables=tables))
            lengths = [n + 1 for n in lengths]
            out.step_tokens.append(len(prompts))
        _sync(ctx.device)
        out.step_seconds.append(time.perf_counter() - start)
        for seq, tok in zip(out.tokens, result.next_tokens, strict=True):
            seq.append(tok)
        out.logits.append(result.logits)
        if on_step is not None:
            on_step(step, result)
        step += 1
    for table in tables:
        allocator.free(table)
    if refused is not None:
        raise refused
    return out


@torch.inference_mode()
def reference_generate(
    model: Transformer, prompts: list[list[int]], max_new_tokens: int
) -> Generation:
    """The single-device truth: greedy tokens and last-token logits, recomputing every
    sequence from scratch at each step (no KV cache), so the cache is checked too."""
    _check_request(prompts, max_new_tokens, model.spec.max_seq_len)
    out = Generation(tokens=[[] for _ in prompts])
    device = next(model.parameters()).device
    for _ in range(max_new_tokens):
        seqs = [p + t for p, t in zip(prompts, out.tokens, strict=True)]
        lengths = [len(s) for s in seqs]
        tokens = torch.tensor([t for s in seqs for t in s], dtype=torch.long, device=device)
        logits = model(tokens, sequence_metadata(lengths, device))
        last = torch.tensor(lengths, device=device).cumsum(0) - 1
        step_logits = logits[last].float()
        for seq, tok in zip(out.tokens, step_logits.argmax(-1).tolist(), strict=True):
            seq.append(tok)
        out.logits.append(step_logits)
        out.step_tokens.append(sum(lengths))
    return out


def _check_request(prompts: list[list[int]], max_new_tokens: int, max_seq_len: int) -> None:
    """The model reads each prompt and every new token but the last: len + new - 1 positions."""
    if max_new_tokens > 0:
        check_max_seq_len([len(p) + max_new_tokens - 1 for p in prompts], max_seq_len,
                          "shorten the prompt or lower max_new_tokens")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
