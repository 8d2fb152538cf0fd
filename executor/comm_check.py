"""The worker program of `pypto check-comm`: `python -m pypto_serving.executor.comm_check
SETTINGS.json OUT_DIR`, started by the launcher on every rank (PYPTO_CONFIG and torchrun's
variables set).

Each rank builds the executor's groups (`init_distributed`), walks core's steps in order,
times every call (host clock on CPU; CUDA events on GPU, each call device-synchronized),
checks the results of extra calls on fresh data, and writes its raw record to
OUT_DIR/rankN.json for the report.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from datetime import timedelta
from pathlib import Path

import torch

from ..core.comm_check import PROGRESS_PREFIX, CheckSettings, CheckStep, plan_steps, step_members
from ..core.topology import resolve_topology
from . import distributed
from .comm import GroupCoordinator
from .comm_check_data import OpCase, make_case
from .comm_check_deadline import Deadline, at_key, connect_store, done_key, linger_for_peers
from .errors import ExecutorError

CLOCK_SYNC_ROUNDS = 3
CHECK_CALLS = 2
"""Calls per step on fresh data whose results are checked, after the timed ones."""


def record_file(out_dir: Path, rank: int) -> Path:
    return out_dir / f"rank{rank}.json"


class StepTimer:
    """Times one call: perf_counter on CPU; CUDA events around the call on GPU, after a
    device synchronize so the call starts from an idle stream."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        if self.cuda:
            self._start = torch.cuda.Event(enable_timing=True)
            self._end = torch.cuda.Event(enable_timing=True)

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def start(self) -> int:
        now = time.perf_counter_ns()
        if self.cuda:
            self._start.record()
        return now

    def stop(self, started: int) -> int:
        if self.cuda:
            self._end.record()
            self._end.synchronize()
            return int(self._start.elapsed_time(self._end) * 1e6)
        return time.perf_counter_ns() - started


def run_step(step: CheckStep, case: OpCase, settings: CheckSettings, timer: StepTimer,
             deadline: Deadline | None, group_index: int, members: tuple[int, ...],
             delay_s: float) -> dict:
    """One step as nccl-tests runs one size: warm-up calls, timed calls back to back (no
    refill or check between them, so nothing of ours sits between two calls), then
    CHECK_CALLS calls on fresh data whose results every rank checks."""
    enter, leave, dur, wrong, bad_iters, wrong_from = [], [], [], 0, 0, {}
    buf = case.fresh()
    timed = settings.warmup + settings.iters
    for it in range(timed + CHECK_CALLS):
        if it >= timed:
            buf = case.fresh()
        if delay_s:
            time.sleep(delay_s)
        timer.sync()
        if deadline is not None:
            deadline.arm(step, group_index, members)
        started = timer.start()
        out = case.call(buf)
        took = timer.stop(started)
        left = time.perf_counter_ns()
        if deadline is not None:
            deadline.disarm()
        if settings.warmup <= it < timed:
            enter.append(started)
            leave.append(left)
            dur.append(took)
        elif it >= timed:
            n, by_source = case.check(out)
            if n:
                bad_iters += 1
                wrong = max(wrong, n)
                for src, k in by_source.items():
                    wrong_from[src] = max(wrong_from.get(src, 0), k)
    return {"step": step.index, "group": group_index, "members": list(members),
            "count": case.count, "bytes": case.nbytes, "enter_ns": enter, "leave_ns": leave,
            "dur_ns": dur, "wrong": wrong, "bad_iters": bad_iters, "checked": CHECK_CALLS,
            "wrong_from": wrong_from}


def clock_at_barrier(world: GroupCoordinator) -> int:
    """This rank's clock at the end of a world barrier: the report aligns the clocks of
    different nodes by it (to within a barrier's skew)."""
    for _ in range(CLOCK_SYNC_ROUNDS):
        world.barrier()
    return time.perf_counter_ns()


def run_check(settings: CheckSettings, out_dir: Path,
              gather: bool = False) -> dict[int, dict] | None:
    """This rank's whole check. It writes its record to OUT_DIR and returns {rank: record};
    with `gather` (inside a launch, where no one reads OUT_DIR) every rank hands its record
    to rank 0 through the store instead, and rank 0 returns them all (the others None)."""
    ctx = distributed.init_distributed()
    rank = ctx.rank
    topology = resolve_topology(ctx.config)
    steps = plan_steps(topology, settings)
    groups = {kind: distributed.get_group(kind) for kind in topology.group_kinds}
    inject = settings.inject
    mine = inject is not None and inject.rank == rank
    store = connect_store()
    deadline = (Deadline(rank, settings.timeout_s, out_dir, topology, steps)
                if topology.world_size > 1 else None)
    timer = StepTimer(ctx.device)
    clock_sync = clock_at_barrier(groups["world"])
    entries = []
    if mine and inject.kind == "hang":
        sys.stderr.write(f"check-comm: rank {rank}: hanging on purpose (--inject hang:{rank})\n")
        sys.stderr.flush()
        while True:  # an injected hang: this rank never arrives at its first op
            time.sleep(3600)
    if mine and inject.kind == "crash":  # an injected death: the launcher reports it
        os.kill(os.getpid(), signal.SIGKILL)
    delay_s = inject.delay_ms / 1e3 if mine and inject.kind == "slow" else 0.0
    for step in steps:
        group = groups[step.kind]
        members = step_members(group.ranks, step)
        if rank in members:
            store.set(at_key(rank), str(step.index))
            case = make_case(step, group, members, rank)
            if mine and inject.kind == "corrupt":
                case.corrupt()
            entries.append(run_step(step, case, settings, timer, deadline, group.index,
                                    members, delay_s))
            store.set(done_key(rank), str(step.index))
        if settings.progress and rank == 0:
            print(f"{PROGRESS_PREFIX}{step.index + 1}/{len(steps)}", flush=True)
    if deadline is not None:
        deadline.close()
    record = {"rank": rank, "node": ctx.rank_info.node, "platform": ctx.device.type,
              "clock_sync_ns": clock_sync,
              "backend": str(torch.distributed.get_backend()), "complete": True,
              "steps": entries}
    records: dict[int, dict] | None = {rank: record}
    if gather:
        records = _gather_records(store, record, topology.world_size, settings.timeout_s)
    else:
        path = record_file(out_dir, rank)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record))
        tmp.replace(path)
    linger_for_peers(store, rank, topology.world_size, settings.timeout_s)
    distributed.destroy_distributed()
    return records


def _gather_records(store, record: dict, world: int, timeout_s: float) -> dict[int, dict] | None:
    """Every rank's record to rank 0, as JSON through the store (never pickle)."""
    rank = record["rank"]
    store.set(f"record/{rank}", json.dumps(record))
    if rank != 0:
        return None
    keys = [f"record/{r}" for r in range(world)]
    store.wait(keys, timedelta(seconds=max(60.0, 2 * timeout_s)))
    return {r: json.loads(store.get(key)) for r, key in enumerate(keys)}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        sys.stderr.write("usage: python -m pypto_serving.executor.comm_check SETTINGS.json "
                         "OUT_DIR (started by `pypto check-comm`)\n")
        return 2
    settings = CheckSettings.from_dict(json.loads(Path(args[0]).read_text()))
    try:
        run_check(settings, Path(args[1]))
    except ExecutorError as e:
        sys.stderr.write(f"check-comm: {e}\n")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
