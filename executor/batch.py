"""What a scheduler hands a runner for one step, and the step flattened for the model.

A step is a list of chunks, one per sequence: `token_ids` at positions start_pos.. of that
sequence, its KV written through `block_table` (prefill chunks at any start position and
decodes, mixed). It runs as one forward over the flat tokens (`build_step`), with varlen
paged attention. `PrefillBatch` / `DecodeBatch` (PyPTO Serving's separate calls) are views
that become such a list. Every rank of a replica receives the same chunks; block ids are the
replica's and valid on every one of its ranks.

Building a step is cheap on the host: one pass over the chunks with C-speed list operations
(a decode's (query, block) pairs are a slice of its block table), each flat list packed with
struct and copied to the device once; nothing waits on the device.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import islice, repeat
from typing import Protocol

import torch

from .errors import SequenceTooLongError
from .model import PagedAttentionMetadata, SequenceMetadata, sequence_metadata


class ChunkLike(Protocol):
    """One sequence's share of a step (engine.plan.SeqChunk has these fields)."""

    token_ids: Sequence[int]
    start_pos: int
    block_table: Sequence[int]
    sample: bool


@dataclass
class StepChunk:
    """The executor's own chunk (what PrefillBatch / DecodeBatch become)."""

    token_ids: list[int]
    start_pos: int
    block_table: list[int]
    sample: bool = True
    output_index: int = 0


@dataclass
class PrefillBatch:
    """Prompts to prefill: `token_ids[i]` go to positions start_positions[i]... of seq i."""

    token_ids: list[list[int]]
    block_tables: list[list[int]]
    start_positions: list[int] | None = None
    """Tokens of each sequence already in the cache (a prefix hit or an earlier chunk)."""

    def chunks(self) -> list[StepChunk]:
        starts = self.start_positions or [0] * len(self.token_ids)
        return [StepChunk(list(t), s, b) for t, s, b in
                zip(self.token_ids, starts, self.block_tables, strict=True)]


@dataclass
class DecodeBatch:
    """One new token per sequence, at `positions[i]` (the sequence's length before it)."""

    token_ids: list[int]
    positions: list[int]
    block_tables: list[list[int]]

    def chunks(self) -> list[StepChunk]:
        return [StepChunk([t], p, b) for t, p, b in
                zip(self.token_ids, self.positions, self.block_tables, strict=True)]


@dataclass
class StepOutput:
    """Logits [sampled seqs, vocab] of the sampling chunks' last tokens and their sampled
    tokens (the last PP stage; `run_prefill` / `run_decode` share the tokens with every rank
    of the replica)."""

    logits: torch.Tensor | None
    next_tokens: list[int] = field(default_factory=list)


@dataclass
class StepInput:
    """A step flattened for the model: tokens [T], metadata, the rows whose logits are
    sampled (each sampling chunk's last token)."""

    tokens: torch.Tensor
    meta: PagedAttentionMetadata | SequenceMetadata
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


def dummy_step(device: torch.device) -> StepInput:
    """An idle replica's step: one token at position 0, no cache, nothing sampled."""
    return StepInput(tokens=torch.zeros(1, dtype=torch.long, device=device),
                     meta=sequence_metadata([1], device),
                     last_rows=torch.zeros(0, dtype=torch.long, device=device))


def build_step(
    batch: PrefillBatch | DecodeBatch | Sequence[ChunkLike] | None, block_size: int,
    device: torch.device, max_seq_len: int | None = None,
) -> StepInput:
    """Flatten one step for the model; `None` (or no chunks) is the dummy step.

    With `max_seq_len`, a sequence reaching a position at or beyond it is refused.
    """
    if batch is None:
        return dummy_step(device)
    chunks = batch.chunks() if isinstance(batch, PrefillBatch | DecodeBatch) else batch
    if not chunks:
        if isinstance(batch, PrefillBatch | DecodeBatch):
            raise ValueError("a batch needs at least one sequence and one token per sequence")
        return dummy_step(device)
    return _index_step(chunks, block_size, device, max_seq_len)


def _tensor(values: list[int], device: torch.device) -> torch.Tensor:
    """int64 tensor of a flat list of ints: struct packs it at C speed (torch.tensor on a
    list of Python ints is several times slower)."""
    buf = bytearray(8 * len(values))
    struct.pack_into(f"<{len(values)}q", buf, 0, *values)
    return torch.frombuffer(buf, dtype=torch.long).to(device, non_blocking=True) if values \
        else torch.zeros(0, dtype=torch.long, device=device)


def _index_step(chunks: Sequence[ChunkLike], block_size: int, device: torch.device,
                max_seq_len: int | None) -> StepInput:
    """Tokens, positions, slots and the (query, block) pairs of a step as flat lists built
    with C-speed list operations (a decode's pairs are its block table's first blocks, a
    prefill token's pairs the blocks up to its own), then one copy each to the device."""
    tokens: list[int] = []
    positions: list[int] = []
    slots: list[int] = []
    pair_query: list[int] = []
    pair_block: list[int] = []
    last_pair: list[int] = []
    last_offset: list[int] = []
    last_rows: list[int] = []
    if max_seq_len is not None:
        check_max_seq_len([c.start_pos + len(c.token_ids) for c in chunks], max_seq_len,
                          "shorten the sequence")
    for i, c in enumerate(chunks):
        n, start, table = len(c.token_ids), c.start_pos, c.block_table
        if n == 0:
            raise ValueError("a batch needs at least one sequence and one token per sequence")
        end = start + n
        need = -(-end // block_size)
        if need > len(table):
            raise IndexError(f"sequence {i} reaches position {end - 1}, which needs {need} "
                             f"blocks, but its block table has {len(table)}")
        row = len(tokens)
        tokens.extend(c.token_ids)
        if n == 1:  # a decode (or a one-token chunk): its pairs are the first `need` blocks
            positions.append(start)
            slots.append(table[start // block_size] * block_size + start % block_size)
            pair_query.extend(repeat(row, need))
            pair_block.extend(table if need == len(table) else islice(table, need))
            last_pair.append(len(pair_block) - 1)
            last_offset.append(start % block_size)
        else:
            for t, p in enumerate(range(start, end), start=row):
                j = p // block_size
                positions.append(p)
                slots.append(table[j] * block_size + p % block_size)
                pair_query.extend(repeat(t, j + 1))
                pair_block.extend(islice(table, j + 1))
                last_pair.append(len(pair_block) - 1)
                last_offset.append(p % block_size)
        if c.sample:
            last_rows.append(len(tokens) - 1)
    offsets = _tensor(last_offset, device)
    meta = PagedAttentionMetadata(
        positions=_tensor(positions, device), slots=_tensor(slots, device),
        pair_query=_tensor(pair_query, device), pair_block=_tensor(pair_block, device),
        last_pair=_tensor(last_pair, device),
        last_hidden=torch.arange(block_size, device=device)[None, :] > offsets[:, None])
    return StepInput(tokens=_tensor(tokens, device), meta=meta,
                     last_rows=_tensor(last_rows, device))
