"""What a scheduler hands a runner for one step, and the step flattened for the model.

A step is a list of chunks, one per sequence: `token_ids` at positions start_pos.. of that
sequence, its KV written through `block_table` (prefill chunks at any start position and
decodes, mixed). It runs as one forward over the flat tokens (`build_step`), with varlen
paged attention. `PrefillBatch` / `DecodeBatch` (PyPTO Serving's separate calls) are views
that become such a list. Every rank of a replica receives the same chunks; block ids are the
replica's and valid on every one of its ranks.

Building a step is vectorised: a few Python passes over the chunks (lengths, starts, the
block tables concatenated), then index arithmetic on tensors on the device, with every
output size known on the host so nothing waits on the device.
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
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
    lens, starts, table_lens, need, last_rows = [], [], [], [], []
    pairs = 0
    tokens, tables = array("q"), array("q")
    for c in chunks:
        n, start = len(c.token_ids), c.start_pos
        if n == 0:
            raise ValueError("a batch needs at least one sequence and one token per sequence")
        end = start + n
        lens.append(n)
        starts.append(start)
        table_lens.append(len(c.block_table))
        need.append(-(-end // block_size))
        if c.sample:
            last_rows.append(len(tokens) + n - 1)
        pairs += _blocks_seen(end, block_size) - _blocks_seen(start, block_size)
        tokens.extend(c.token_ids)
        tables.extend(c.block_table)
    ends = [s + n for s, n in zip(starts, lens, strict=True)]
    if max_seq_len is not None:
        check_max_seq_len(ends, max_seq_len, "shorten the sequence")
    for i, (got, want) in enumerate(zip(table_lens, need, strict=True)):
        if want > got:
            raise IndexError(f"sequence {i} reaches position {ends[i] - 1}, which needs {want} "
                             f"blocks, but its block table has {got}")
    return _index_step(tokens, tables, lens, starts, table_lens, last_rows, pairs, block_size,
                       device)


def _blocks_seen(length: int, block_size: int) -> int:
    """Sum over positions p < length of (p // block_size + 1): the (query, block) pairs of a
    sequence's first `length` tokens."""
    q, r = divmod(length, block_size)
    return block_size * q * (q + 1) // 2 + r * (q + 1)


def _tensor(values: array | list, device: torch.device) -> torch.Tensor:
    t = torch.frombuffer(values, dtype=torch.long) if isinstance(values, array) and values \
        else torch.tensor(list(values), dtype=torch.long)
    return t.to(device, non_blocking=True)


def _index_step(tokens, tables, lens, starts, table_lens, last_rows, pairs: int,
                block_size: int, device: torch.device) -> StepInput:
    """The index arithmetic of a step, on the device, with every size known up front."""
    n_tok, n_seq = len(tokens), len(lens)
    tok = _tensor(tokens, device)
    flat_tables = _tensor(tables, device)
    lens_t = _tensor(lens, device)
    starts_t = _tensor(starts, device)
    table_lens_t = _tensor(table_lens, device)
    table_off = torch.cumsum(table_lens_t, 0) - table_lens_t
    first_row = torch.cumsum(lens_t, 0) - lens_t
    seq_of = torch.repeat_interleave(torch.arange(n_seq, device=device), lens_t,
                                     output_size=n_tok)
    positions = torch.arange(n_tok, device=device) - first_row[seq_of] + starts_t[seq_of]
    block_of = positions // block_size
    token_table = table_off[seq_of]
    slots = flat_tables[token_table + block_of] * block_size + positions % block_size
    per_query = block_of + 1
    pair_query = torch.repeat_interleave(torch.arange(n_tok, device=device), per_query,
                                         output_size=pairs)
    pair_index = torch.arange(pairs, device=device) - (
        torch.cumsum(per_query, 0) - per_query)[pair_query]
    pair_block = flat_tables[token_table[pair_query] + pair_index]
    limit = positions[pair_query] - pair_index * block_size       # last valid offset
    pair_valid = torch.arange(block_size, device=device)[None, :] <= limit[:, None]
    meta = PagedAttentionMetadata(positions=positions, slots=slots, pair_query=pair_query,
                                  pair_block=pair_block, pair_valid=pair_valid)
    return StepInput(tokens=tok, meta=meta, last_rows=_tensor(last_rows, device))
