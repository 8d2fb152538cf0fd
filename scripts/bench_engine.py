"""Benchmark the replica engine.

Host side (this part needs no model): the time to build one decode step of --seqs sequences
at --context tokens each, i.e. the scheduler's pick, the block tables and the StepPlan, plus
its msgpack encoding (what the leader hands the replica's other ranks), the followers'
decoding of it, and applying the sampled tokens (detokenization, stop rules, prefix-cache
bookkeeping). Side by side, in the same run, the baseline: building the same decode batch
the way the executor did before the engine (executor.batch.build_step over a DecodeBatch,
slot mapping of every context token every step). Target: schedule + encode under 5 ms for
256 sequences at 4k context. Medians (and p90) over --steps steps, --rounds rounds, in CPU
time of the engine's thread (time.thread_time), so other processes on a shared machine do not
count; the wall time of the same work is printed too.

Usage: .venv/bin/python scripts/bench_engine.py [--seqs 256] [--context 4096]
       [--block-size 16] [--steps 50] [--rounds 3] [--baseline-steps 3] [--no-baseline]
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from pypto_serving.engine.engine import Engine  # noqa: E402
from pypto_serving.engine.plan import StepPlan, StepResult  # noqa: E402
from pypto_serving.engine.sampling_params import SamplingParams  # noqa: E402
from pypto_serving.engine.tokenizer import ByteTokenizer  # noqa: E402


class HandOverExecutor:
    """Stands in for the replica's ranks: encodes the plan as the leader would to send it,
    decodes it as a follower would, and 'samples' a fixed token; times both (CPU time)."""

    def __init__(self) -> None:
        self.encode_s: list[float] = []
        self.decode_s: list[float] = []
        self.plan_bytes = 0

    def execute(self, plan: StepPlan) -> StepResult:
        t0 = time.thread_time()
        data = plan.encode()
        t1 = time.thread_time()
        StepPlan.decode(data)
        t2 = time.thread_time()
        self.encode_s.append(t1 - t0)
        self.decode_s.append(t2 - t1)
        self.plan_bytes = len(data)
        return StepResult(plan.step_id, {c.seq_id: 65 for c in plan.chunks if c.sample})

    def must_step(self, has_work: bool) -> bool:
        return has_work

    def close(self) -> None:
        pass


def decode_ready_engine(seqs: int, context: int, block_size: int, extra: int) -> Engine:
    """An engine with `seqs` running requests whose prompts (context - 1 tokens, distinct)
    are prefilled, so the next steps are pure decodes at `context` tokens."""
    executor = HandOverExecutor()
    blocks = seqs * (-(-(context + extra) // block_size))
    engine = Engine(executor, num_blocks=blocks, block_size=block_size, max_num_seqs=seqs,
                    max_num_batched_tokens=seqs * context, max_model_len=context + extra,
                    tokenizer=ByteTokenizer())
    sp = SamplingParams(max_tokens=extra, ignore_eos=True)
    for i in range(seqs):
        prompt = [(i * 131 + j * 7) % 256 for j in range(context - 1)]
        prompt[0], prompt[1] = i % 256, i // 256  # distinct first blocks: no prefix sharing
        engine.add_request(f"r{i}", prompt, sp)
    engine.step()  # the whole prefill in one step (the budget allows it)
    engine.scheduler.max_num_batched_tokens = 8192
    executor.encode_s.clear()
    executor.decode_s.clear()
    return engine


def bench_host_step(seqs: int = 256, context: int = 4096, block_size: int = 16,
                    steps: int = 50) -> dict[str, list[float]]:
    """Per decode step, CPU seconds of this thread (the machine may be shared, so wall time
    would count other processes): schedule (plan built), encode, follower decode, and
    applying the tokens; plus the wall time of schedule + encode."""
    engine = decode_ready_engine(seqs, context, block_size, extra=steps + 1)
    executor: HandOverExecutor = engine.executor  # type: ignore[assignment]
    scheduler = engine.scheduler
    schedule = scheduler.schedule
    sched_cpu: list[float] = []
    wall: list[float] = []
    total: list[float] = []

    def timed_schedule():
        t0 = time.thread_time()
        out = schedule()
        sched_cpu.append(time.thread_time() - t0)
        return out

    scheduler.schedule = timed_schedule  # type: ignore[method-assign]
    for _ in range(steps):
        t0 = time.thread_time()
        engine.step()
        total.append(time.thread_time() - t0)
        assert engine.timing.num_tokens == seqs, "not a full decode step"
        wall.append(engine.timing.schedule_s + engine.timing.execute_s)
    enc, dec = executor.encode_s, executor.decode_s
    return {
        "schedule": sched_cpu, "encode": enc, "decode": dec,
        "update": [t - s - e - d for t, s, e, d in zip(total, sched_cpu, enc, dec, strict=True)],
        "schedule + encode": [s + e for s, e in zip(sched_cpu, enc, strict=True)],
        "wall: schedule + encode + decode": wall,
        "plan_bytes": [float(executor.plan_bytes)],
    }


def bench_baseline_build_step(seqs: int = 256, context: int = 4096, block_size: int = 16,
                              steps: int = 3) -> list[float]:
    """Seconds to build the same decode step with executor.batch.build_step (before the
    engine): every context token's slot mapped, every step."""
    import torch

    from pypto_serving.executor.batch import DecodeBatch, build_step

    per = -(-context // block_size)
    tables = [list(range(i * per, (i + 1) * per)) for i in range(seqs)]
    batch = DecodeBatch(token_ids=[65] * seqs, positions=[context - 1] * seqs,
                        block_tables=tables)
    times = []
    for _ in range(steps):
        t0 = time.thread_time()
        build_step(batch, block_size, torch.device("cpu"))
        times.append(time.thread_time() - t0)
    return times


def ms(values: list[float], q: float = 0.5) -> str:
    values = sorted(values)
    return f"{values[min(len(values) - 1, int(q * len(values)))] * 1e3:.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seqs", type=int, default=256)
    ap.add_argument("--context", type=int, default=4096)
    ap.add_argument("--block-size", type=int, default=16)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--baseline-steps", type=int, default=3)
    ap.add_argument("--no-baseline", action="store_true")
    args = ap.parse_args()

    runs: dict[str, list[float]] = {}
    plan_bytes = 0.0
    for _ in range(args.rounds):
        r = bench_host_step(args.seqs, args.context, args.block_size, args.steps)
        plan_bytes = r.pop("plan_bytes")[0]
        for k, v in r.items():
            runs.setdefault(k, []).extend(v)
    baseline = None if args.no_baseline else bench_baseline_build_step(
        args.seqs, args.context, args.block_size, args.baseline_steps)

    console = Console()
    title = (f"one decode step of {args.seqs} sequences at {args.context} tokens, block "
             f"{args.block_size} ({platform.node()}, {platform.processor() or platform.machine()})")
    table = Table(title=title)
    table.add_column("part (CPU time of the engine's thread)")
    table.add_column("median ms", justify="right")
    table.add_column("p90 ms", justify="right")
    labels = {"schedule": "schedule (pick + block tables + StepPlan)",
              "encode": f"plan encode (msgpack, {plan_bytes / 1024:.0f} KiB)",
              "schedule + encode": "schedule + encode (target < 5 ms)",
              "decode": "plan decode on a follower rank",
              "update": "apply tokens (detok, stops, prefix cache)",
              "wall: schedule + encode + decode": "wall time: schedule + encode + decode"}
    for name, label in labels.items():
        table.add_row(label, ms(runs[name]), ms(runs[name], 0.9))
    if baseline is not None:
        table.add_row("baseline: executor.batch.build_step(DecodeBatch)", ms(baseline),
                      ms(baseline, 0.9))
    console.print(table)


if __name__ == "__main__":
    main()
