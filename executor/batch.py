"""What a scheduler hands a runner for one step, and what it gets back.

Every rank of a replica receives the same batch (its scheduler's decision); block ids are
the replica's and valid on every one of its ranks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .errors import SequenceTooLongError
from .kv_cache import slot_mapping
from .model import AttentionMetadata


@dataclass
class PrefillBatch:
    """Prompts to prefill: `token_ids[i]` go to positions start_positions[i]... of seq i."""

    token_ids: list[list[int]]
    block_tables: list[list[int]]
    start_positions: list[int] | None = None
    """Tokens of each sequence already in the cache (a prefix hit or an earlier chunk)."""


@dataclass
class DecodeBatch:
    """One new token per sequence, at `positions[i]` (the sequence's length before it)."""

    token_ids: list[int]
    positions: list[int]
    block_tables: list[list[int]]


@dataclass
class StepOutput:
    """Last-token logits [seqs, vocab] (last PP stage only) and greedy next tokens (all ranks)."""

    logits: torch.Tensor | None
    next_tokens: list[int] = field(default_factory=list)


@dataclass
class StepInput:
    """A batch flattened for the model: tokens [T], metadata, last-token row of each seq."""

    tokens: torch.Tensor
    meta: AttentionMetadata
    last_rows: torch.Tensor

    @property
    def num_tokens(self) -> int:
        return self.tokens.shape[0]

    @property
    def num_seqs(self) -> int:
        return self.last_rows.shape[0]


def check_max_seq_len(lengths: list[int], max_seq_len: int, fix: str) -> None:
    """Each sequence of `lengths` tokens uses positions 0..length-1: all must be below
    model.max_seq_len (the rotary table's size). `fix` says what the caller can shorten."""
    for i, length in enumerate(lengths):
        if length > max_seq_len:
            raise SequenceTooLongError(
                f"sequence {i} needs positions up to {length - 1}, but model.max_seq_len is "
                f"{max_seq_len} (positions 0..{max_seq_len - 1}): {fix}, or raise "
                "model.max_seq_len")


def build_step(
    batch: PrefillBatch | DecodeBatch | None, block_size: int, device: torch.device,
    use_cache: bool = True, max_seq_len: int | None = None,
) -> StepInput:
    """Flatten a batch; `None` is the dummy step (one token at position 0, no cache).

    With `max_seq_len`, a sequence reaching a position at or beyond it is refused.
    """
    if batch is None:
        return _flatten([[0]], [0], None, block_size, device)
    if isinstance(batch, DecodeBatch):
        seqs = [[t] for t in batch.token_ids]
        starts = list(batch.positions)
    else:
        seqs = batch.token_ids
        starts = batch.start_positions or [0] * len(seqs)
    if not seqs or any(len(s) == 0 for s in seqs):
        raise ValueError("a batch needs at least one sequence and one token per sequence")
    if max_seq_len is not None:
        check_max_seq_len([start + len(s) for s, start in zip(seqs, starts, strict=True)],
                          max_seq_len, "shorten the sequence")
    return _flatten(seqs, starts, batch.block_tables if use_cache else None, block_size, device)


def _flatten(seqs, starts, block_tables, block_size, device) -> StepInput:
    if block_tables is None and any(starts):
        raise ValueError("without a KV cache every sequence must start at position 0")
    tokens, lens, key_rows, slots, last = [], [], [], [], []
    for i, (toks, start) in enumerate(zip(seqs, starts, strict=True)):
        length = start + len(toks)
        if block_tables is not None:
            context = slot_mapping(block_tables[i], range(length), block_size)
            slots += context[start:]
        else:
            context = list(range(len(tokens), len(tokens) + length))
        key_rows.append(context)
        tokens += toks
        lens.append(length)
        last.append(len(tokens) - 1)
    meta = AttentionMetadata.build([len(s) for s in seqs], lens, key_rows,
                                   slots if block_tables is not None else None, device)
    return StepInput(
        tokens=torch.tensor(tokens, dtype=torch.long).to(device),
        meta=meta,
        last_rows=torch.tensor(last, dtype=torch.long).to(device),
    )
