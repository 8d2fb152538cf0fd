"""Driving one DP replica's ranks: the leader's StepExecutor and the other ranks' loop.

The leader (the replica's first rank, where the engine runs) encodes each step's plan
(`StepPlan.encode()`, msgpack) and broadcasts it over the CPU (gloo) twin of the replica
group, so handing it over never waits on a device. Every rank of the replica runs the same
one forward; PP stages pass activations in order (pp.py); the last stage's first TP rank
samples and sends the tokens back to the leader over the same CPU group. Under DP + EP the
leaders agree every step whether any replica has work (`must_step`, a CPU all_reduce over
the DP group's twin), and an idle replica runs the empty plan, a dummy step, so no MoE
all2all waits on it.

This module is the bridge to the engine: it reads `engine.plan` (plain data, no torch) and
implements `engine.executor_api.StepExecutor` by shape (execute, must_step, close).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import torch

from ..engine.plan import StepPlan, StepResult
from . import distributed
from .comm import GroupCoordinator
from .context import ParallelContext
from .runner import ModelRunner

FIRST_FRAME_BYTES = 4096
"""The first broadcast of a plan: 8 bytes of length, then the plan's first bytes. A plan
longer than that (long prompts, long block tables) takes one more broadcast of the rest."""
MAX_KEEPALIVE_S = 30.0
"""An idle leader tells its ranks it is alive at least this often (and at least 4 times per
communication timeout), so a follower waiting for the next plan never times out."""


class PlanChannel:
    """Step plans, as bytes, from the replica leader to every other rank of the replica."""

    def __init__(self, group: GroupCoordinator):
        self.group = group  # the leader is its first member (position 0)

    def send(self, data: bytes) -> None:
        """Leader side: one broadcast for a plan that fits the first frame, two otherwise."""
        if self.group.world_size == 1:
            return
        head = FIRST_FRAME_BYTES - 8
        frame = bytearray(FIRST_FRAME_BYTES)
        frame[:8] = len(data).to_bytes(8, "little")
        frame[8:8 + min(len(data), head)] = data[:head]
        self.group.broadcast(torch.frombuffer(frame, dtype=torch.uint8), src=0)
        if len(data) > head:
            rest = bytearray(data[head:])
            self.group.broadcast(torch.frombuffer(rest, dtype=torch.uint8), src=0)

    def keepalive(self) -> None:
        """Leader side, while idle: a frame of length 0, which a follower skips."""
        if self.group.world_size > 1:
            frame = bytearray(FIRST_FRAME_BYTES)
            self.group.broadcast(torch.frombuffer(frame, dtype=torch.uint8), src=0)

    def receive(self) -> bytes:
        """Other ranks: the next plan's bytes (blocks until the leader sends one)."""
        head = FIRST_FRAME_BYTES - 8
        frame = bytearray(FIRST_FRAME_BYTES)
        size = 0
        while size == 0:  # keepalive frames: the leader is idle, wait on
            self.group.broadcast(torch.frombuffer(frame, dtype=torch.uint8), src=0)
            size = int.from_bytes(frame[:8], "little")
        if size <= head:
            return bytes(frame[8:8 + size])
        rest = bytearray(size - head)
        self.group.broadcast(torch.frombuffer(rest, dtype=torch.uint8), src=0)
        return bytes(frame[8:]) + bytes(rest)


def sampling_rank(ctx: ParallelContext) -> int:
    """The rank whose sampled tokens count: the last PP stage's first TP rank."""
    p = ctx.config.parallel
    return ctx.replica.ranks[(p.pipeline_parallel_size - 1) * p.tensor_parallel_size]


def run_plan(ctx: ParallelContext, runner: ModelRunner, plan: StepPlan,
             group: GroupCoordinator) -> StepResult | None:
    """This rank's part of one step; the leader gets the StepResult, the others None."""
    samplers = [c for c in plan.chunks if c.sample]
    params = [plan.sampling.get(c.seq_id) for c in samplers]
    out = runner.run_step(plan.chunks, params)
    sampler, leader = sampling_rank(ctx), ctx.replica.first_rank
    if ctx.rank == sampler and sampler != leader and samplers:
        group.send(torch.tensor(out.next_tokens, dtype=torch.long), dst=leader)
    if ctx.rank != leader:
        return None
    if sampler == leader:
        tokens = out.next_tokens
    else:
        tokens = group.recv((len(samplers),), torch.long, src=sampler).tolist() \
            if samplers else []
    return StepResult(step_id=plan.step_id,
                      tokens={c.seq_id: t for c, t in zip(samplers, tokens, strict=True)})


@dataclass
class HandoverStats:
    """What handing plans over cost the leader: encode + broadcast time, bytes, steps."""

    steps: int = 0
    seconds: float = 0.0
    bytes: int = 0

    def to_dict(self) -> dict:
        return {"steps": self.steps, "seconds": self.seconds, "bytes": self.bytes,
                "mean_us": 1e6 * self.seconds / self.steps if self.steps else 0.0}


class ReplicaExecutor:
    """The engine's StepExecutor on the replica leader: plan out, one step, tokens back."""

    def __init__(self, ctx: ParallelContext, runner: ModelRunner,
                 stop: threading.Event | None = None):
        """`stop`: the serving loop's stop event. Under DP + EP a stop is agreed between the
        leaders (request_stop, then the next must_step sets `stop` on all of them at once),
        so no leader leaves while another waits for it in a collective."""
        if not ctx.is_replica_leader:
            raise ValueError(f"rank {ctx.rank} is not its replica's leader "
                             f"({ctx.replica.first_rank}); run follow(ctx, runner) there")
        self.ctx, self.runner = ctx, runner
        self.group = distributed.get_cpu_group("replica")
        self.channel = PlanChannel(self.group)
        self.dp = distributed.get_cpu_group("dp")
        self.lock_step = ctx.expert_parallel and ctx.dp.world_size > 1
        self.handover = HandoverStats()
        timeout = self.group.timeout.total_seconds() if self.group.timeout else MAX_KEEPALIVE_S
        self.keepalive_s = min(MAX_KEEPALIVE_S, timeout / 4)
        self._last_sent = time.monotonic()
        self.stop = stop if stop is not None else threading.Event()
        self.stop_requested = threading.Event()
        self._closed = False

    def request_stop(self) -> None:
        """Ask to stop serving (SIGTERM): at once without lock-step, else at the next vote."""
        self.stop_requested.set()
        if not self.lock_step:
            self.stop.set()

    def execute(self, plan: StepPlan) -> StepResult:
        """Run one step on every rank of the replica; an empty plan is a dummy step."""
        start = time.perf_counter()
        data = plan.encode()
        self.channel.send(data)
        self._last_sent = time.monotonic()
        self.handover.seconds += time.perf_counter() - start
        self.handover.bytes += len(data)
        self.handover.steps += 1
        return run_plan(self.ctx, self.runner, plan, self.group)

    def must_step(self, has_work: bool) -> bool:
        """Under DP + EP: whether any replica has work (a CPU all_reduce over the leaders of
        a busy flag and a stop flag; a stop anywhere sets `stop` everywhere and answers
        False); otherwise `has_work`. A turn without a step may send the replica's ranks a
        keepalive (see MAX_KEEPALIVE_S)."""
        go = has_work
        if self.lock_step:
            flags = torch.tensor([int(has_work), int(self.stop_requested.is_set())],
                                 dtype=torch.long)
            busy, stopping = self.dp.all_reduce(flags).tolist()
            if stopping:
                self.stop.set()
            go = busy > 0 and not stopping
        if not go and time.monotonic() - self._last_sent > self.keepalive_s:
            self.channel.keepalive()
            self._last_sent = time.monotonic()
        return go

    def close(self) -> None:
        """Tell the other ranks to leave their loop (once)."""
        if not self._closed:
            self._closed = True
            self.channel.send(StepPlan(step_id=-1, shutdown=True).encode())


def follow(ctx: ParallelContext, runner: ModelRunner) -> int:
    """The loop of a replica's other ranks: receive each plan, run it, until the leader's
    shutdown plan. Returns the number of steps run."""
    group = distributed.get_cpu_group("replica")
    channel = PlanChannel(group)
    steps = 0
    while True:
        plan = StepPlan.decode(channel.receive())
        if plan.shutdown:
            return steps
        run_plan(ctx, runner, plan, group)
        steps += 1
