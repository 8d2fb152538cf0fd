"""A deterministic pure-Python model behind the StepExecutor protocol, for engine tests.

It keeps a paged "KV cache" of its own (slot -> (position, token)) written through each
chunk's block table, and picks the next token from the context it reads back through the
table. So a wrong block table, a prefix hit on the wrong block or an evicted block that is
still used changes the tokens (or trips an assertion), as it would with a real model. The real
model runs in the executor's tests.
"""

from __future__ import annotations

import random
import threading
import time

from pypto_serving.engine.plan import StepPlan, StepResult

MOD = (1 << 61) - 1


def next_token(context: list[int], vocab: int, seed: int | None = None,
               output_index: int = 0) -> int:
    """The fake model's choice after `context`; seeded sampling mixes in seed and index."""
    h = 7
    for t in context:
        h = (h * 1_000_003 + t + 1) % MOD
    if seed is not None:
        h = (h * 1_000_033 + seed * 7919 + output_index + 1) % MOD
    return h % vocab


class FakeModelExecutor:
    """StepExecutor over a paged fake KV cache; records what each step ran."""

    def __init__(self, num_blocks: int, block_size: int, vocab: int = 256,
                 step_s: float = 0.0):
        self.step_s = step_s
        """Seconds each non-empty step takes (the model's compute time)."""
        self.block_size = block_size
        self.vocab = vocab
        self.kv: list[tuple[int, int] | None] = [None] * (num_blocks * block_size)
        self.steps: list[list[tuple[int, int, int, bool]]] = []
        """Per executed step: (seq_id, start_pos, num_tokens, sample) of each chunk."""
        self.closed = False

    def _slot(self, table: list[int], pos: int) -> int:
        return table[pos // self.block_size] * self.block_size + pos % self.block_size

    def execute(self, plan: StepPlan) -> StepResult:
        plan = StepPlan.decode(plan.encode())  # what the other ranks would get
        if self.step_s and plan.chunks:
            time.sleep(self.step_s)
        tokens: dict[int, int] = {}
        self.steps.append([(c.seq_id, c.start_pos, len(c.token_ids), c.sample)
                           for c in plan.chunks])
        for c in plan.chunks:
            end = c.start_pos + len(c.token_ids)
            assert end <= len(c.block_table) * self.block_size, "block table too short"
            for i, t in enumerate(c.token_ids):
                self.kv[self._slot(c.block_table, c.start_pos + i)] = (c.start_pos + i, t)
        for c in plan.chunks:
            if not c.sample:
                continue
            end = c.start_pos + len(c.token_ids)
            context = []
            for p in range(end):
                entry = self.kv[self._slot(c.block_table, p)]
                assert entry is not None and entry[0] == p, f"KV of position {p} is not there"
                context.append(entry[1])
            sp = plan.sampling[c.seq_id]
            if sp.greedy:
                tokens[c.seq_id] = next_token(context, self.vocab)
            elif sp.seed is not None:
                tokens[c.seq_id] = next_token(context, self.vocab, sp.seed, c.output_index)
            else:
                tokens[c.seq_id] = random.randrange(self.vocab)
        return StepResult(plan.step_id, tokens)

    def must_step(self, has_work: bool) -> bool:
        return has_work

    def close(self) -> None:
        self.closed = True


def reference_tokens(prompt: list[int], max_tokens: int, vocab: int = 256,
                     seed: int | None = None, eos: int | None = None) -> list[int]:
    """What the fake model generates for `prompt` alone, straight from `next_token`."""
    seq = list(prompt)
    out: list[int] = []
    while len(out) < max_tokens:
        t = next_token(seq, vocab, seed, len(out))
        out.append(t)
        seq.append(t)
        if t == eos:
            break
    return out


class LockStepFakeExecutor(FakeModelExecutor):
    """The fake model as one replica of DP + EP: `others_busy` stands for another replica
    with work, so `must_step` is True while it is set (the real vote is a CPU collective)."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.others_busy = threading.Event()
        self.dummy_steps = 0

    def execute(self, plan: StepPlan) -> StepResult:
        if plan.is_dummy:
            self.dummy_steps += 1
        return super().execute(plan)

    def must_step(self, has_work: bool) -> bool:
        return has_work or self.others_busy.is_set()


class FailingExecutor(FakeModelExecutor):
    """The fake model until step `fail_at`, which raises (a rank died mid-step)."""

    def __init__(self, *args, fail_at: int, **kw):
        super().__init__(*args, **kw)
        self.fail_at = fail_at

    def execute(self, plan: StepPlan) -> StepResult:
        if len(self.steps) + 1 >= self.fail_at and plan.chunks:
            raise RuntimeError("rank 1 of the replica is gone")
        return super().execute(plan)
