"""Continuous batching for one replica: which tokens of which requests run in the next step.

Each step packs, under `max_num_batched_tokens` and `max_num_seqs`: first one token for every
running request that is decoding, then prefill chunks of running requests with what is left
of the budget, then new requests from the front of the queue (FCFS), each as far as the
budget allows; a long prompt is prefilled in chunks over several steps and never holds up
the others' decodes. KV blocks are allocated as tokens are scheduled. When the pool runs out,
the most recently admitted running request is preempted by recompute: its blocks go back and
it returns to the front of the queue, to be prefilled again (prompt and generated tokens;
the prefix cache often still holds them). No torch, no shards: one logical worker.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from .block_manager import BlockManager
from .errors import RequestRejected
from .plan import SeqChunk, StepPlan
from .request import FinishReason, Request, RequestState


@dataclass
class ScheduledStep:
    """One step as scheduled: the plan the ranks run and, in plan order, each scheduled
    request with the number of its tokens the step computes."""

    plan: StepPlan
    scheduled: list[tuple[Request, int]] = field(default_factory=list)
    preempted: list[Request] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return sum(n for _, n in self.scheduled)


class Scheduler:
    """FCFS continuous batching with chunked prefill and preemption by recompute."""

    def __init__(self, block_manager: BlockManager, *, max_num_seqs: int,
                 max_num_batched_tokens: int, max_model_len: int):
        for name, value in (("max_num_seqs", max_num_seqs),
                            ("max_num_batched_tokens", max_num_batched_tokens),
                            ("max_model_len", max_model_len)):
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        self.bm = block_manager
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.max_model_len = max_model_len
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self._step_id = 0
        self.num_preemptions = 0
        self.prefix_hits = 0
        """Prompt tokens found in the prefix cache at requests' first scheduling."""
        self.prefix_queries = 0
        """Prompt tokens looked up in the prefix cache at requests' first scheduling."""

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    @property
    def kv_capacity_tokens(self) -> int:
        return self.bm.num_blocks * self.bm.block_size

    def admission_error(self, num_prompt_tokens: int, max_tokens: int) -> str | None:
        """Why a request of this size can never run here (naming the limit), or None."""
        total = num_prompt_tokens + max_tokens
        if num_prompt_tokens < 1:
            return "the prompt is empty: a request needs at least one prompt token"
        if max_tokens < 1:
            return f"max_tokens must be at least 1, got {max_tokens}"
        if total > self.max_model_len:
            return (f"prompt ({num_prompt_tokens} tokens) + max_tokens ({max_tokens}) = {total} "
                    f"tokens is over the model's context length max_model_len="
                    f"{self.max_model_len}; shorten the prompt or lower max_tokens")
        cap = self.kv_capacity_tokens
        if total > cap:
            return (f"prompt ({num_prompt_tokens} tokens) + max_tokens ({max_tokens}) = {total} "
                    f"tokens is over this replica's whole KV cache of {cap} tokens "
                    f"({self.bm.num_blocks} blocks x {self.bm.block_size}); shorten the prompt, "
                    f"lower max_tokens or give the replica more KV memory (serve.kv_cache_bytes)")
        return None

    def add(self, req: Request) -> None:
        """Queue a new request at the back (FCFS); RequestRejected if it can never fit."""
        why = self.admission_error(req.num_prompt_tokens, req.sampling.max_tokens)
        if why is not None:
            raise RequestRejected(req.rid, why)
        req.state = RequestState.WAITING
        self.waiting.append(req)

    def finish(self, req: Request, reason: FinishReason) -> None:
        """End a request wherever it is: its blocks go back at once."""
        if req.state is RequestState.FINISHED:
            return
        if req.state is RequestState.RUNNING:
            self.running.remove(req)
            self.bm.free(req)
        else:
            self.waiting.remove(req)
        req.state = RequestState.FINISHED
        req.finish_reason = reason

    def _preempt(self, req: Request) -> None:
        self.running.remove(req)
        self.bm.free(req)
        req.state = RequestState.PREEMPTED
        req.num_computed_tokens = 0
        req.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(req)

    def schedule(self) -> ScheduledStep:
        """Pick this step's tokens and build its plan (empty when there is nothing to run:
        the caller may still execute it as a dummy step)."""
        bm = self.bm
        budget = self.max_num_batched_tokens
        running = self.running
        picked: dict[int, tuple[Request, int]] = {}
        preempted: list[Request] = []

        # Running requests: decodes first, then prefill chunks with the budget left.
        for decoding in (True, False):
            i = 0
            while i < len(running) and budget > 0:
                req = running[i]
                remaining = req.num_tokens - req.num_computed_tokens
                if (remaining == 1) != decoding:
                    i += 1
                    continue
                n = min(remaining, budget)
                while not bm.allocate(req, req.num_computed_tokens + n):
                    victim = running[-1]  # the most recently admitted: lowest priority
                    if victim.seq_id in picked:
                        budget += picked.pop(victim.seq_id)[1]
                    self._preempt(victim)
                    preempted.append(victim)
                    if victim is req:
                        break
                if req.state is RequestState.RUNNING:
                    picked[req.seq_id] = (req, n)
                    budget -= n
                    i += 1

        # New (or preempted) requests from the front of the queue, unless this step had to
        # preempt: then the pool is short and admitting more would only thrash.
        if not preempted:
            waiting = self.waiting
            while waiting and budget > 0 and len(running) < self.max_num_seqs:
                req = waiting[0]
                hits = bm.find_cached_prefix(req)
                computed = len(hits) * bm.block_size
                n = min(req.num_tokens - computed, budget)
                if not bm.allocate(req, computed + n, hits):
                    break  # FCFS: the head waits for blocks, nobody overtakes it
                waiting.popleft()
                if req.num_cached_tokens < 0:
                    req.num_cached_tokens = computed
                    self.prefix_hits += computed
                    self.prefix_queries += req.num_prompt_tokens
                req.num_computed_tokens = computed
                req.state = RequestState.RUNNING
                running.append(req)
                picked[req.seq_id] = (req, n)
                budget -= n

        self._step_id += 1
        plan = StepPlan(step_id=self._step_id)
        scheduled = list(picked.values())
        for req, n in scheduled:
            start = req.num_computed_tokens
            end = start + n
            sample = end == req.num_tokens
            plan.chunks.append(SeqChunk(
                req.seq_id, req.token_ids[start:end], start, bm.block_table(req.seq_id),
                sample, req.num_output_tokens))
            if sample:
                plan.sampling[req.seq_id] = req.sampling
        return ScheduledStep(plan, scheduled, preempted)

    def update(self, step: ScheduledStep, tokens: dict[int, int]) -> list[tuple[Request, int]]:
        """Apply an executed step: the computed tokens' KV is now cached (full blocks enter
        the prefix cache) and each sampling request gets its new token. Returns the
        (request, new token) pairs; the caller decides which requests finish."""
        sampled: list[tuple[Request, int]] = []
        bm = self.bm
        for req, n in step.scheduled:
            if req.state is not RequestState.RUNNING:
                continue  # finished (aborted) since it was scheduled
            req.num_computed_tokens += n
            bm.cache_full_blocks(req)
            if req.num_computed_tokens == req.num_tokens:
                token = tokens.get(req.seq_id)
                if token is None:
                    raise KeyError(f"the executor returned no token for sequence {req.seq_id} "
                                   f"({req.rid!r}) of step {step.plan.step_id}")
                req.token_ids.append(token)
                sampled.append((req, token))
        return sampled
