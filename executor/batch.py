"""What a scheduler hands a runner for one step, and the step flattened for the model.

A step is a list of chunks, one per sequence: `token_ids` at positions start_pos.. of that
sequence, its KV written through `block_table` (prefill chunks at any start position and
decodes, mixed). It runs as one forward over the flat tokens (`build_step`), with paged
attention (executor/attention.py). `PrefillBatch` / `DecodeBatch` (PyPTO Serving's separate
calls) are views that become such a list. Every rank of a replica receives the same chunks;
block ids are the replica's and valid on every one of its ranks.

Building a step is cheap on the host: one pass over the chunks with C-speed list operations
(a decode row's blocks are a slice of its block table), each flat list packed with struct and
copied to the device once; nothing waits on the device.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import islice, repeat
from typing import Protocol

import torch

from .attention import PREFILL_BLOCK_M, PagedAttentionMetadata, PrefillSpan, PrefillTables
from .errors import SequenceTooLongError
from .model import SequenceMetadata, sequence_metadata
from .ops import triton_on


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


WARMUP_CHUNK_TOKENS = 128
"""The prompt length of warmup_prefill's chunks (a burst of short prompts)."""


def warmup_prefill(max_tokens: int, max_seqs: int, max_seq_len: int, num_blocks: int,
                   block_size: int, vocab_size: int) -> list[StepChunk]:
    """The biggest prefill step a burst of new requests makes: up to `max_tokens` tokens
    (serve.max_num_batched_tokens) in prompts of up to WARMUP_CHUNK_TOKENS, at most
    `max_seqs` of them, on distinct blocks of a free cache (nothing is cached yet, so
    writing them harms nobody)."""
    length = max(1, min(WARMUP_CHUNK_TOKENS, max_seq_len - 1, max_tokens))
    need = -(-length // block_size)
    count = min(max_tokens // length, max_seqs, num_blocks // need)
    tokens = [i % vocab_size for i in range(length)]
    return [StepChunk(tokens, 0, list(range(i * need, (i + 1) * need))) for i in range(count)]


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


def int_tensor(values: list[int], device: torch.device, fmt: str = "q") -> torch.Tensor:
    """int64 ("q") or int32 ("i") tensor of a flat list of ints: struct packs it at C speed
    (torch.tensor on a list of Python ints is several times slower)."""
    dtype = torch.long if fmt == "q" else torch.int32
    if not values:
        return torch.zeros(0, dtype=dtype, device=device)
    buf = bytearray(struct.calcsize(fmt) * len(values))
    struct.pack_into(f"<{len(values)}{fmt}", buf, 0, *values)
    return torch.frombuffer(buf, dtype=dtype).to(device, non_blocking=True)


def padded_tables(tables: Sequence[Sequence[int]], width: int) -> list[int]:
    """Block tables cut or padded to `width` (the padding: each table's first block, at
    positions no row reads), flat, one table after another."""
    flat: list[int] = []
    for table in tables:
        flat.extend(islice(table, width))
        flat.extend(repeat(table[0], width - len(table)))
    return flat


def prefill_tables(spans: Sequence[tuple[int, int, int, int, int]], blocks: list[int],
                   device: torch.device) -> PrefillTables:
    """The chunks (row, length, start, blocks from, to) as the batched prefill kernel takes
    them: one copy each of info, padded tables and work items."""
    width = max(b - a for *_, a, b in spans)
    info: list[int] = []
    flat: list[int] = []
    work: list[int] = []
    for c, (row, n, start, a, b) in enumerate(spans):
        info += (row, n, start)
        flat.extend(blocks[a:b])
        flat.extend(repeat(blocks[a], width - (b - a)))
        for m0 in range(0, n, PREFILL_BLOCK_M):
            work += (c, m0)
    return PrefillTables(info=int_tensor(info, device, "i").view(len(spans), 3),
                         tables=int_tensor(flat, device, "i").view(len(spans), width),
                         work=int_tensor(work, device, "i").view(-1, 2))


def _index_step(chunks: Sequence[ChunkLike], block_size: int, device: torch.device,
                max_seq_len: int | None) -> StepInput:
    """Tokens, positions and slots of a step as flat lists; decode rows' block tables padded
    to one width; prefill chunks' blocks in one list, each a slice of it. Built with C-speed
    list operations, then one copy each to the device."""
    tokens: list[int] = []
    positions: list[int] = []
    slots: list[int] = []
    decode_rows: list[int] = []
    decode_tables: list[Sequence[int]] = []
    context_lens: list[int] = []
    spans: list[tuple[int, int, int, int, int]] = []  # row, length, start, blocks from, to
    prefill_blocks: list[int] = []
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
        if n == 1:  # a decode (or a one-token chunk): one row over its first `need` blocks
            positions.append(start)
            slots.append(table[start // block_size] * block_size + start % block_size)
            decode_rows.append(row)
            decode_tables.append(table if need == len(table) else table[:need])
            context_lens.append(end)
        else:
            positions.extend(range(start, end))
            slots.extend(table[p // block_size] * block_size + p % block_size
                         for p in range(start, end))
            spans.append((row, n, start, len(prefill_blocks), len(prefill_blocks) + need))
            prefill_blocks.extend(islice(table, need))
        if c.sample:
            last_rows.append(len(tokens) - 1)
    width = max(map(len, decode_tables), default=0)
    flat_tables = padded_tables(decode_tables, width)
    blocks = int_tensor(prefill_blocks, device)
    # the batched prefill kernel's tables: only where it runs (several chunks, Triton)
    tables = (prefill_tables(spans, prefill_blocks, device)
              if len(spans) > 1 and triton_on(device) else None)
    meta = PagedAttentionMetadata(
        positions=int_tensor(positions, device), slots=int_tensor(slots, device),
        decode_rows=None if not spans else int_tensor(decode_rows, device),
        block_tables=int_tensor(flat_tables, device, "i").view(len(decode_tables), width),
        context_lens=int_tensor(context_lens, device),
        prefills=[PrefillSpan(row, n, start, blocks[a:b]) for row, n, start, a, b in spans],
        prefill_tables=tables)
    return StepInput(tokens=int_tensor(tokens, device), meta=meta,
                     last_rows=int_tensor(last_rows, device))
