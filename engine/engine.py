"""The replica engine: requests in, one scheduled step at a time, outputs out.

`Engine` owns one replica's request lifecycle, its KV block tables and its prefix-cache
metadata (block manager), and drives one `StepExecutor` (the replica's ranks, or a test
model). Every `step()` runs exactly one `executor.execute(plan)`, with an empty plan (a dummy
step) when nothing is schedulable, so a caller under DP + EP can keep replicas in lock-step.
No torch here.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import dataclass

from .block_manager import BlockManager
from .errors import RequestRejected
from .executor_api import StepExecutor
from .output import OutputProcessor, RequestOutput
from .request import FinishReason, Request
from .sampling_params import SamplingParams
from .scheduler import Scheduler
from .tokenizer import Tokenizer

MAX_STOP_STRINGS = 32
MAX_STOP_CHARS = 512
"""Bounds on stop strings: every new token is checked against each of them."""


@dataclass
class StepTiming:
    """Host seconds of the last step: scheduling + plan, the executor, applying results."""

    schedule_s: float = 0.0
    execute_s: float = 0.0
    update_s: float = 0.0
    num_tokens: int = 0


def sampling_issue(sp: SamplingParams, vocab_size: int) -> str | None:
    """What is wrong with a request's sampling parameters (naming the field), or None."""
    if not isinstance(sp.max_tokens, int) or isinstance(sp.max_tokens, bool):
        return f"max_tokens must be an integer, got {sp.max_tokens!r}"
    if not isinstance(sp.temperature, (int, float)) or not math.isfinite(sp.temperature) \
            or sp.temperature < 0:
        return f"temperature must be a finite number >= 0, got {sp.temperature!r}"
    if not isinstance(sp.top_p, (int, float)) or not 0 < sp.top_p <= 1:
        return f"top_p must be in (0, 1], got {sp.top_p!r}"
    if not isinstance(sp.top_k, int) or sp.top_k < 0:
        return f"top_k must be an integer >= 0 (0: no cut), got {sp.top_k!r}"
    if sp.seed is not None and (not isinstance(sp.seed, int) or isinstance(sp.seed, bool)):
        return f"seed must be an integer or null, got {sp.seed!r}"
    if not all(isinstance(s, str) for s in sp.stop):
        return f"stop must be a list of strings, got {list(sp.stop)[:4]!r}"
    if len(sp.stop) > MAX_STOP_STRINGS or any(len(s) > MAX_STOP_CHARS for s in sp.stop):
        return (f"stop takes at most {MAX_STOP_STRINGS} strings of at most {MAX_STOP_CHARS} "
                f"characters each, got {len(sp.stop)} (longest {max(map(len, sp.stop))})")
    bad = [t for t in sp.stop_token_ids
           if not isinstance(t, int) or isinstance(t, bool) or not 0 <= t < vocab_size]
    if bad:
        return f"stop_token_ids {bad[:4]} are not token ids of this model (0..{vocab_size - 1})"
    if not isinstance(sp.ignore_eos, bool):
        return f"ignore_eos must be true or false, got {sp.ignore_eos!r}"
    return None


class Engine:
    """One DP replica's engine on its leader rank: scheduler, block manager, prefix cache,
    detokenization and stop handling over a `StepExecutor`."""

    def __init__(
        self,
        executor: StepExecutor,
        *,
        num_blocks: int,
        block_size: int,
        max_num_seqs: int,
        max_num_batched_tokens: int,
        max_model_len: int,
        tokenizer: Tokenizer,
        eos_token_ids: Iterable[int] | None = None,
    ):
        self.executor = executor
        self.tokenizer = tokenizer
        self.eos_token_ids = frozenset(
            tokenizer.stop_token_ids if eos_token_ids is None else eos_token_ids)
        """End-of-sequence ids, each ending a request unless it sets ignore_eos (None: the
        tokenizer's stop_token_ids, i.e. generation_config.json's eos_token_id list)."""
        self.block_manager = BlockManager(num_blocks, block_size)
        self.scheduler = Scheduler(self.block_manager, max_num_seqs=max_num_seqs,
                                   max_num_batched_tokens=max_num_batched_tokens,
                                   max_model_len=max_model_len)
        self.block_size = block_size
        self.max_model_len = max_model_len
        self._requests: dict[str, Request] = {}
        self._outputs: dict[str, OutputProcessor] = {}
        self._next_seq_id = 0
        self.num_steps = 0
        self.timing = StepTiming()
        self.steps = {"prefill": 0, "decode": 0}
        """Steps run, by kind: "decode" (every row one token after the first output: decodes,
        or a recomputed request's last token), "prefill" (at least one longer chunk)."""
        self.step_seconds = {"prefill": 0.0, "decode": 0.0}
        """The executor's seconds in them (the router shows both as counters)."""

    # --- requests ---------------------------------------------------------------------------

    def add_request(self, rid: str, prompt_token_ids: list[int],
                    sampling: SamplingParams) -> None:
        """Queue a request; RequestRejected (naming the limit or the bad field) if it is
        malformed or can never fit this replica."""
        if not isinstance(rid, str) or not rid:
            raise RequestRejected(str(rid), f"rid must be a non-empty string, got {rid!r}")
        if rid in self._requests:
            raise RequestRejected(rid, f"request {rid!r} is already in this engine; rids must "
                                       "be unique among unfinished requests")
        vocab = self.tokenizer.vocab_size
        if not isinstance(prompt_token_ids, list) or not all(
                isinstance(t, int) and not isinstance(t, bool) and 0 <= t < vocab
                for t in prompt_token_ids):
            raise RequestRejected(rid, f"prompt_token_ids must be a list of token ids "
                                       f"0..{vocab - 1}")
        issue = sampling_issue(sampling, vocab)
        if issue is not None:
            raise RequestRejected(rid, issue)
        req = Request(rid, self._next_seq_id, prompt_token_ids, sampling)
        self.scheduler.add(req)
        self._next_seq_id += 1
        self._requests[rid] = req
        self._outputs[rid] = OutputProcessor(req, self.tokenizer, self.eos_token_ids)

    def abort(self, rid: str) -> RequestOutput | None:
        """End a request now (its blocks go back at once); its final output, or None if
        the engine does not know it (finished already, or never added)."""
        return self._end(rid, "abort")

    def fail_all(self) -> list[RequestOutput]:
        """End every request with "error" (the executor failed): what their clients get."""
        return [out for rid in list(self._requests) if (out := self._end(rid, "error"))]

    def _end(self, rid: str, reason: FinishReason) -> RequestOutput | None:
        req = self._requests.pop(rid, None)
        if req is None:
            return None
        output = self._outputs.pop(rid)
        try:
            text = output.finish()
        except Exception:
            if reason != "error":
                raise
            text = ""  # ending after a failure: what went wrong must not fail the ending too
        self.scheduler.finish(req, reason)
        return self._output(req, [], text)

    @staticmethod
    def _output(req: Request, token_ids: list[int], text: str) -> RequestOutput:
        finished = req.is_finished
        return RequestOutput(
            req.rid, token_ids, text, finished, req.finish_reason, req.num_prompt_tokens,
            max(0, req.num_cached_tokens), req.num_output_tokens,
            req.timings(time.monotonic()) if finished else None)

    @property
    def has_work(self) -> bool:
        return self.scheduler.has_work

    # --- stepping ---------------------------------------------------------------------------

    def step(self) -> list[RequestOutput]:
        """Schedule one step, run it (exactly one executor.execute; a dummy one when nothing
        is schedulable), apply the sampled tokens; one output per request that got a token."""
        t0 = time.perf_counter()
        scheduled = self.scheduler.schedule()
        t1 = time.perf_counter()
        now = time.monotonic()
        decode_only = True
        for req, n in scheduled.scheduled:
            if not req.scheduled_s:
                req.scheduled_s = now
            decode_only = decode_only and n == 1 and req.num_output_tokens > 0
        result = self.executor.execute(scheduled.plan)
        t2 = time.perf_counter()
        if scheduled.scheduled:
            kind = "decode" if decode_only else "prefill"
            self.steps[kind] += 1
            self.step_seconds[kind] += t2 - t1
        outputs: list[RequestOutput] = []
        now = time.monotonic()
        for req, token in self.scheduler.update(scheduled, result.tokens):
            if not req.first_token_s:
                req.first_token_s = now
            proc = self._outputs[req.rid]
            text, reason = proc.on_token(token)
            if reason is not None:
                self.scheduler.finish(req, reason)
                del self._requests[req.rid], self._outputs[req.rid]
            outputs.append(self._output(req, [token], text))
        self.num_steps += 1
        self.timing = StepTiming(t1 - t0, t2 - t1, time.perf_counter() - t2,
                                 scheduled.num_tokens)
        return outputs

    # --- what the router sees ---------------------------------------------------------------

    def stats(self) -> dict:
        """Load and cache figures (the protocol's "stats" message without its op)."""
        sched, bm = self.scheduler, self.block_manager
        return {
            "waiting": len(sched.waiting),
            "running": len(sched.running),
            "pending_tokens": sum(r.pending_tokens for r in self._requests.values()),
            "kv_usage": bm.usage,
            "kv_blocks_total": bm.num_blocks,
            "kv_blocks_free": bm.num_free,
            "prefix_hits": sched.prefix_hits,
            "prefix_queries": sched.prefix_queries,
            "num_preemptions": sched.num_preemptions,
            "steps": dict(self.steps),
            "step_seconds": dict(self.step_seconds),
        }

    def drain_kv_events(self) -> tuple[list[int], list[int]]:
        """(stored, evicted) prefix-block hashes since the last call."""
        return self.block_manager.drain_kv_events()

    def cached_hashes(self) -> list[int]:
        """Every prefix-block hash cached now (for a router that just connected)."""
        return self.block_manager.cached_hashes()

    def request(self, rid: str) -> Request | None:
        """The unfinished request `rid`, or None."""
        return self._requests.get(rid)
