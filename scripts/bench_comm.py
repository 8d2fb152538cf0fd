#!/usr/bin/env python
"""check-comm's own overhead: its all_reduce bus bandwidth against a bare loop of
`dist.all_reduce` timed the same way, at each size, in one run on the same workers.

Both sides run in the same launched workers, interleaved size by size and round by round
(so load drifts hit both alike; which side goes first alternates by round). check-comm's
side is its step (executor.comm_check's `run_step` over `make_case`: deadline armed per
call, host and device clocks read, results of the check calls compared), the
bare side times `dist.all_reduce` on the same process group with nothing around it. Each
round's time is the slowest rank's median over --iters calls (nccl-tests' busbw:
algbw x 2(n-1)/n); the table shows the median over --rounds, their ratio, the ratio of the
two sides' best rounds (the least disturbed on a shared machine) and each side's range.
Usage:

    .venv/bin/python scripts/bench_comm.py [--ranks 2] [--sizes 1KB,1MB,16MB,64MB]
        [--iters 10] [--warmup 2] [--rounds 5] [--platform cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _worker(out: str, sizes: list[int], iters: int, warmup: int, rounds: int) -> None:
    """On every rank: both measurements; rank 0 writes the per-round times."""
    import torch
    import torch.distributed as dist

    from pypto_serving.core.comm_check import CheckSettings, CheckStep, element_count
    from pypto_serving.executor import distributed
    from pypto_serving.executor.comm_check import StepTimer, run_step
    from pypto_serving.executor.comm_check_data import make_case
    from pypto_serving.executor.comm_check_deadline import Deadline

    ctx = distributed.init_distributed()
    group = distributed.get_world_group()
    settings = CheckSettings(kinds=("world",), ops=("all_reduce",), sizes=tuple(sizes),
                             iters=iters, warmup=warmup, timeout_s=600.0)
    deadline = Deadline(ctx.rank, settings.timeout_s, Path(out).parent,
                        _topology(ctx.config), ())
    timer = StepTimer(ctx.device)

    def slowest(median_ns: float) -> float:
        t = torch.tensor([median_ns], dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return float(t.item())

    def bare(count: int) -> float:
        buf = torch.zeros(count, dtype=torch.float32, device=ctx.device)
        times = []
        for it in range(warmup + iters):
            timer.sync()
            started = timer.start()
            dist.all_reduce(buf, group=group.process_group)
            took = timer.stop(started)
            if it >= warmup:
                times.append(took)
        return statistics.median(times)

    results = {"check_comm": {}, "bare": {}}
    def ours(i: int, size: int) -> float:
        step = CheckStep(i, "world", "all_reduce", size)
        case = make_case(step, group, group.ranks, ctx.rank)
        entry = run_step(step, case, settings, timer, deadline, 0, group.ranks, 0.0)
        assert entry["wrong"] == 0, entry
        return statistics.median(entry["dur_ns"])

    for r in range(rounds):
        for i, size in enumerate(sizes):
            count = element_count("all_reduce", size, group.world_size)
            sides = [("check_comm", lambda i=i, size=size: ours(i, size)),
                     ("bare", lambda count=count: bare(count))]
            for name, measure in sides if r % 2 == 0 else sides[::-1]:  # alternate order
                results[name].setdefault(str(size), []).append(slowest(measure()))
    deadline.close()
    if ctx.rank == 0:
        Path(out).write_text(json.dumps({"world": group.world_size, "results": results,
                                         "backend": str(dist.get_backend())}))
    distributed.destroy_distributed()


def _topology(config):
    from pypto_serving.core.topology import resolve_topology

    return resolve_topology(config)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--sizes", default="1KB,64KB,1MB,16MB,64MB")
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--platform", default="cpu")
    args = parser.parse_args()
    if args.ranks < 2:
        sys.exit("--ranks must be 2 or more: bus bandwidth does not apply to one rank")

    from rich.console import Console
    from rich.table import Table

    from pypto_serving.core.comm_check import parse_sizes
    from pypto_serving.core.comm_report import bus_factor
    from pypto_serving.core.loader import resolve_config
    from pypto_serving.launcher import LaunchSpec, launch

    sizes = list(parse_sizes(args.sizes))
    cfg = resolve_config(overrides={
        "parallel": {"data_parallel_size": args.ranks},
        "model": {"name": "tiny-dense", "num_experts": 0},
        "cluster": {"devices_per_node": args.ranks, "platform": args.platform}})
    with tempfile.TemporaryDirectory(prefix="bench-comm-") as tmp:
        out = Path(tmp) / "result.json"
        spec = LaunchSpec(target=__file__, args=["--worker", str(out), json.dumps(sizes),
                                                 str(args.iters), str(args.warmup),
                                                 str(args.rounds)],
                          config=cfg, standalone=True)
        start = time.monotonic()
        result = launch(spec)
        if result.exit_code != 0 or not out.exists():
            sys.exit(f"the bench workers failed (exit {result.exit_code})")
        data = json.loads(out.read_text())
        wall = time.monotonic() - start
    n = data["world"]
    factor = bus_factor("all_reduce", n)
    table = Table(title=f"all_reduce busbw, {n} ranks, {data['backend']} "
                        f"(median of {args.rounds} rounds x {args.iters} calls)")
    for col in ("size", "check-comm GB/s", "bare GB/s", "check-comm / bare",
                "best / best", "check-comm us (min-max)", "bare us (min-max)"):
        table.add_column(col, justify="right")
    for size in sizes:
        runs = [[t / 1e3 for t in data["results"][side][str(size)]]
                for side in ("check_comm", "bare")]
        ours, theirs = (statistics.median(r) for r in runs)
        count_bytes = max(1, size // 4) * 4
        bw = [count_bytes / (t * 1e-6) / 1e9 * factor for t in (ours, theirs)]
        spread = [f"{statistics.median(r):.1f} ({min(r):.0f}-{max(r):.0f})" for r in runs]
        best = min(runs[1]) / min(runs[0])  # busbw ratio of the least disturbed rounds
        table.add_row(_human(size), f"{bw[0]:.4g}", f"{bw[1]:.4g}", f"{bw[0] / bw[1]:.3f}",
                      f"{best:.3f}", *spread)
    console = Console(width=120)
    console.print(table)
    console.print(f"machine: {platform.machine()}, {os.cpu_count()} CPU(s), load "
                  f"{os.getloadavg()[0]:.1f}; wall {wall:.1f} s")


def _human(n: int) -> str:
    for unit, size in (("MiB", 1024**2), ("KiB", 1024)):
        if n >= size:
            return f"{n // size} {unit}"
    return f"{n} B"


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        out, sizes, iters, warmup, rounds = sys.argv[2:7]
        _worker(out, json.loads(sizes), int(iters), int(warmup), int(rounds))
    else:
        main()
