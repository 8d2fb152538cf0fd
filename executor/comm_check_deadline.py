"""Nothing hangs: every op call of a check has a deadline, and who never arrived is read
from the TCP store, not waited for.

Before each step a rank writes the step it has reached to `at/RANK` in the job's store, after
it the step it finished to `done/RANK`. A watchdog thread sees what is armed (it looks a
few times per deadline) and sleeps to that call's deadline; when the call has run past it,
the watchdog reads those keys (over its own store connection,
so a main thread blocked in a collective does not matter): which members never arrived,
and, following each of them to the step it is in and whom it waits for there, the ranks at
the root of the wait. It writes that record for the report, says it on stderr and ends the
process with EXIT_DEADLINE; the launcher then stops the rest. Rank 0 hosts the store, so it
lingers at the end until every rank has left (`linger_for_peers`); a watchdog that still
finds the store gone (rank 0 itself past a deadline) writes no record rather than a wrong
one.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import torch.distributed as dist

from ..core.comm_check import EXIT_DEADLINE, CheckStep, step_members
from ..core.topology import Topology

STORE_PREFIX = "pypto-check-comm/"
STORE_TIMEOUT_S = 10.0
LINGER_MARGIN_S = 5.0


def connect_store() -> dist.Store:
    """A client of the job's TCP store (hosted by rank 0 at MASTER_ADDR:MASTER_PORT)."""
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]),
                          is_master=False, timeout=timedelta(seconds=STORE_TIMEOUT_S))
    return dist.PrefixStore(STORE_PREFIX, store)


def at_key(rank: int) -> str:
    """The step `rank` has reached (set before the step's first call)."""
    return f"at/{rank}"


def done_key(rank: int) -> str:
    """The last step `rank` has finished."""
    return f"done/{rank}"


def exit_key(rank: int) -> str:
    """Set when `rank` leaves the check (done, or past a deadline and about to exit)."""
    return f"exit/{rank}"


def mark_exit(store: dist.Store, rank: int) -> None:
    """Say that this rank needs the store no more (best effort: it may be gone already)."""
    try:
        store.set(exit_key(rank), "1")
    except RuntimeError:
        pass


def linger_for_peers(store: dist.Store, rank: int, world: int, timeout_s: float) -> None:
    """On rank 0, which hosts the job's store: wait (at most a deadline and a half, and a few
    seconds) until every rank has left, so that a rank still waiting on a hung peer can read
    from the store who never arrived, rather than find it gone with rank 0."""
    mark_exit(store, rank)
    if rank != 0:
        return
    keys = [exit_key(r) for r in range(world)]
    try:
        store.wait(keys, timedelta(seconds=1.5 * timeout_s + LINGER_MARGIN_S))
    except RuntimeError:  # a rank that never left (hung): the launcher stops it
        pass


def deadline_file(out_dir: Path, rank: int) -> Path:
    return out_dir / f"rank{rank}.deadline.json"


class StoreLost(Exception):
    """The job's TCP store stopped answering: rank 0, which hosts it, has ended."""


class Deadline:
    """The watchdog of one rank: `arm(step, group, members)` before each call (two attribute
    writes, nothing that would show in the timings), `disarm()` after it."""

    def __init__(self, rank: int, timeout_s: float, out_dir: Path, topology: Topology,
                 steps: tuple[CheckStep, ...]):
        self.rank = rank
        self.topology = topology
        self.steps = steps
        self.timeout_s = timeout_s
        self.out_dir = out_dir
        self._store = connect_store()
        self._current: tuple[CheckStep, int, tuple[int, ...]] | None = None
        self._since = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="check-comm-deadline",
                                        daemon=True)
        self._thread.start()

    def arm(self, step: CheckStep, group: int, members: tuple[int, ...]) -> None:
        self._since = time.monotonic()
        self._current = (step, group, members)

    def disarm(self) -> None:
        self._current = None

    def close(self) -> None:
        self._stop.set()
        self._thread.join()

    def _watch(self) -> None:
        # Wake every `poll` to see what is armed, then sleep to the armed call's exact deadline:
        # the rank that started waiting first is the first to report (and waited_s is the
        # timeout, not the timeout plus up to a poll).
        poll = min(1.0, self.timeout_s / 4)
        wait = poll
        while not self._stop.wait(wait):
            current, since = self._current, self._since
            wait = poll
            if current is None:
                continue
            left = since + self.timeout_s - time.monotonic()
            if left > 0:
                wait = left
            elif current is self._current:  # still the same call
                self._expire(*current, time.monotonic() - since)

    def _expire(self, step: CheckStep, group: int, members: tuple[int, ...],
                waited: float) -> None:
        where = (f"check-comm: rank {self.rank}: {step.kind}#{group} {step.label} "
                 f"{step.size_bytes} B ran past its {self.timeout_s:g} s deadline")
        record = self.record(step, group, members, waited)
        if record is None:
            sys.stderr.write(f"{where}, but the job's store (hosted by rank 0) is gone, so "
                             "who was missing cannot be read; a report of a rank that read "
                             "it stands\n")
        else:
            path = deadline_file(self.out_dir, self.rank)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(record))
            tmp.replace(path)
            names = ", ".join(map(str, record["missing"])) or "none"
            sys.stderr.write(f"{where}; never arrived: {names}; at the root of the wait: "
                             f"{', '.join(map(str, record['root'])) or 'none'}\n")
        sys.stderr.flush()
        mark_exit(self._store, self.rank)
        os._exit(EXIT_DEADLINE)

    def record(self, step: CheckStep, group: int, members: tuple[int, ...],
               waited: float) -> dict | None:
        """What the store says about a call past its deadline: who never arrived, whom they
        wait for, the root; None when the store went away while it was read (rank 0 ended
        first, after its own report): then this rank cannot tell a missing rank from a lost
        store, and says nothing rather than name ranks that did arrive."""
        try:
            missing, waiting = self._who(step, members)
            chain, roots = self._follow(missing)
        except StoreLost:
            return None
        return {
            "rank": self.rank, "step": step.index, "kind": step.kind, "group": group,
            "members": list(members), "op": step.op, "variant": step.variant,
            "size_bytes": step.size_bytes, "timeout_s": self.timeout_s, "waited_s": waited,
            "missing": missing, "waiting": waiting, "chain": chain,
            "root": sorted(roots) if missing else sorted(waiting),
        }

    def _who(self, step: CheckStep, members: tuple[int, ...]) -> tuple[list[int], list[int]]:
        """Members of `step` that never arrived, and those that arrived but never finished."""
        missing, waiting = [], []
        for r in members:
            at, done = self._step_of(at_key(r)), self._step_of(done_key(r))
            if at < step.index:
                missing.append(r)
            elif done < step.index:
                waiting.append(r)
        return missing, waiting

    def _follow(self, missing: list[int]) -> tuple[list[dict], set[int]]:
        """Where each missing rank is and whom it waits for, back to the ranks that
        explain the wait: one that reached no step, sits between steps, or is in a step
        every member of which arrived."""
        chain, roots, seen = [], set(), set()
        todo = list(missing)
        while todo:
            r = todo.pop(0)
            if r in seen:
                continue
            seen.add(r)
            at = self._step_of(at_key(r))
            if at < 0:
                chain.append({"rank": r, "step": None})
                roots.add(r)
                continue
            step = self.steps[at]
            info = self.topology.group(step.kind, r)
            entry = {"rank": r, "step": at, "kind": step.kind, "group": info.index,
                     "op": step.op, "variant": step.variant, "size_bytes": step.size_bytes}
            if self._step_of(done_key(r)) >= at:
                chain.append({**entry, "between_steps": True})
                roots.add(r)
                continue
            blockers, _ = self._who(step, step_members(info.ranks, step))
            chain.append({**entry, "missing": blockers})
            if not blockers:
                roots.add(r)
            todo += blockers
        return chain, roots

    def _step_of(self, key: str) -> int:
        """The step stored at `key`, -1 if none (or not a number); StoreLost if the store is
        gone."""
        try:
            if not self._store.check([key]):
                return -1
            value = self._store.get(key)
        except RuntimeError as e:  # torch's store errors (DistStoreError, DistNetworkError)
            raise StoreLost(str(e)) from None
        try:
            return int(value)
        except ValueError:
            return -1
