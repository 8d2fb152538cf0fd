"""One request's life in the engine: its tokens, how many have KV in the cache, its state.

Pure Python (no torch): the scheduler and the block manager work on these.
"""

from __future__ import annotations

import time
from enum import Enum
from typing import Literal

from .sampling_params import SamplingParams

FinishReason = Literal["stop", "length", "abort", "error"]


class RequestState(Enum):
    WAITING = "waiting"
    """Admitted, not yet scheduled (never ran)."""
    RUNNING = "running"
    """Holds KV blocks and is stepped (prefill chunks, then one decode token per step)."""
    PREEMPTED = "preempted"
    """Its blocks were taken back; it waits at the front of the queue to be recomputed."""
    FINISHED = "finished"


class Request:
    """A request's tokens (prompt then generated) and its progress.

    `num_computed_tokens` tokens have their KV in the cache; the rest are computed by later
    steps (prefill chunks, or the one newest token of a decode). After a preemption it drops
    to 0 and the request recomputes prompt and generated tokens (the prefix cache may still
    hold most of them).
    """

    __slots__ = ("rid", "seq_id", "sampling", "num_prompt_tokens", "token_ids", "state",
                 "finish_reason", "num_computed_tokens", "num_cached_tokens", "block_hashes",
                 "num_preemptions", "error", "arrival_s", "scheduled_s", "first_token_s")

    def __init__(self, rid: str, seq_id: int, prompt_token_ids: list[int],
                 sampling: SamplingParams):
        self.rid = rid
        self.seq_id = seq_id
        self.sampling = sampling
        self.num_prompt_tokens = len(prompt_token_ids)
        self.token_ids: list[int] = list(prompt_token_ids)
        self.state = RequestState.WAITING
        self.finish_reason: FinishReason | None = None
        self.num_computed_tokens = 0
        self.num_cached_tokens = -1
        """Prompt tokens that came from the prefix cache at first scheduling; -1 before."""
        self.block_hashes: list[int] = []
        """Chained hashes of this request's full blocks, computed once, extended as needed."""
        self.num_preemptions = 0
        self.error: str | None = None
        # time.monotonic() when added, first scheduled and given its first token (0.0: not yet)
        self.arrival_s = time.monotonic()
        self.scheduled_s = 0.0
        self.first_token_s = 0.0

    def timings(self, now: float) -> dict[str, float]:
        """Where its time went, at its end (vLLM's phases): waiting to be scheduled, from
        then to the first token (prefill), from then on (decode); phases it never reached
        are left out. A preemption's wait and recomputation count in the phase they
        interrupt."""
        out = {}
        if self.scheduled_s:
            out["queue_s"] = self.scheduled_s - self.arrival_s
            if self.first_token_s:
                out["prefill_s"] = self.first_token_s - self.scheduled_s
                out["decode_s"] = now - self.first_token_s
        return out

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens:]

    @property
    def prompt_token_ids(self) -> list[int]:
        return self.token_ids[:self.num_prompt_tokens]

    @property
    def is_finished(self) -> bool:
        return self.state is RequestState.FINISHED

    @property
    def pending_tokens(self) -> int:
        """Prompt tokens not yet prefilled plus tokens still to decode (the router's load)."""
        if self.is_finished:
            return 0
        unfilled = max(0, self.num_prompt_tokens - self.num_computed_tokens)
        return unfilled + self.sampling.max_tokens - self.num_output_tokens

    def __repr__(self) -> str:
        return (f"Request({self.rid!r}, seq={self.seq_id}, {self.state.value}, "
                f"tokens={self.num_prompt_tokens}+{self.num_output_tokens}, "
                f"computed={self.num_computed_tokens})")
