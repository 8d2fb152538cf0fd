"""One engine step as the replica's ranks see it: small plain data, no torch.

The leader's scheduler builds a `StepPlan`; it is encoded with msgpack and handed to every
other rank of the replica over the replica's CPU (gloo) group, so handing it over never waits
on a device. Every rank runs the same one forward over the plan's ragged batch (prefill chunks
and decodes together); the last PP stage samples and the sampled tokens go back to the leader.
An empty plan (no chunks) is a dummy step: it joins the collectives (MoE all2all under DP + EP)
with no work of its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import msgpack

from .sampling_params import SamplingParams


@dataclass
class SeqChunk:
    """One sequence's share of a step: `token_ids` at positions start_pos.. of sequence
    `seq_id`, written into the KV cache through `block_table` (covers start_pos + len)."""

    seq_id: int
    token_ids: list[int]
    start_pos: int
    block_table: list[int]
    sample: bool
    """Whether this chunk ends at the sequence's last known token (a decode, or the last chunk
    of a prefill): then a token is sampled for it."""
    output_index: int = 0
    """Tokens this sequence has generated so far (keys the seeded generator)."""


@dataclass
class StepPlan:
    """Everything a rank needs to run one step. `sampling` holds the parameters of every
    sequence in `chunks` that samples, by seq_id."""

    step_id: int
    chunks: list[SeqChunk] = field(default_factory=list)
    sampling: dict[int, SamplingParams] = field(default_factory=dict)
    shutdown: bool = False
    """The leader is stopping: ranks leave their step loop after this plan."""

    @property
    def is_dummy(self) -> bool:
        return not self.chunks and not self.shutdown

    @property
    def num_tokens(self) -> int:
        return sum(len(c.token_ids) for c in self.chunks)

    def encode(self) -> bytes:
        """msgpack of plain lists (no pickle): what crosses the CPU group."""
        return msgpack.packb([
            self.step_id, self.shutdown,
            [[c.seq_id, c.token_ids, c.start_pos, c.block_table, c.sample, c.output_index]
             for c in self.chunks],
            [[sid, p.to_dict()] for sid, p in self.sampling.items()],
        ])

    @classmethod
    def decode(cls, data: bytes) -> StepPlan:
        step_id, shutdown, chunks, sampling = msgpack.unpackb(data)
        return cls(
            step_id=step_id, shutdown=shutdown,
            chunks=[SeqChunk(*c) for c in chunks],
            sampling={sid: SamplingParams.from_dict(p) for sid, p in sampling},
        )


@dataclass
class StepResult:
    """What the leader gets back: one sampled token per sampling chunk, by seq_id."""

    step_id: int
    tokens: dict[int, int] = field(default_factory=dict)
