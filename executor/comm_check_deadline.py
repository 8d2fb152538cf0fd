"""Nothing hangs: every op call of a check has a deadline, and who never arrived is read
from the TCP store, not waited for.

Before each step a rank writes `arrive/STEP/RANK` to the job's store, after it
`done/STEP/RANK`. A watchdog thread wakes a few times per deadline; when a call has run
past it, the watchdog reads which members of the group wrote those keys (its own store
connection, so a main thread blocked in a collective does not matter), writes the record
for the report, says it on stderr and ends the process with EXIT_DEADLINE. The launcher
then stops the rest.
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

from ..core.comm_check import CheckStep

EXIT_DEADLINE = 3
"""Exit code of a worker whose op ran past its deadline (the report explains it)."""
STORE_PREFIX = "pypto-check-comm/"
STORE_TIMEOUT_S = 10.0


def connect_store() -> dist.Store:
    """A client of the job's TCP store (hosted by rank 0 at MASTER_ADDR:MASTER_PORT)."""
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]),
                          is_master=False, timeout=timedelta(seconds=STORE_TIMEOUT_S))
    return dist.PrefixStore(STORE_PREFIX, store)


def arrive_key(step: int, rank: int) -> str:
    return f"arrive/{step}/{rank}"


def done_key(step: int, rank: int) -> str:
    return f"done/{step}/{rank}"


def deadline_file(out_dir: Path, rank: int) -> Path:
    return out_dir / f"rank{rank}.deadline.json"


class Deadline:
    """The watchdog of one rank: `arm(step, group, members)` before each call (two attribute
    writes, nothing that would show in the timings), `disarm()` after it."""

    def __init__(self, rank: int, timeout_s: float, out_dir: Path):
        self.rank = rank
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
        poll = min(1.0, self.timeout_s / 4)
        while not self._stop.wait(poll):
            current, since = self._current, self._since
            if current is not None and time.monotonic() - since > self.timeout_s:
                if current is self._current:  # still the same call
                    self._expire(*current, time.monotonic() - since)

    def _expire(self, step: CheckStep, group: int, members: tuple[int, ...],
                waited: float) -> None:
        arrived = [r for r in members if self._has(arrive_key(step.index, r))]
        finished = [r for r in members if self._has(done_key(step.index, r))]
        record = {
            "rank": self.rank, "step": step.index, "kind": step.kind, "group": group,
            "members": list(members), "op": step.op, "variant": step.variant,
            "size_bytes": step.size_bytes, "timeout_s": self.timeout_s, "waited_s": waited,
            "missing": [r for r in members if r not in arrived],
            "waiting": [r for r in arrived if r not in finished],
        }
        path = deadline_file(self.out_dir, self.rank)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record))
        tmp.replace(path)
        missing = ", ".join(map(str, record["missing"])) or "none"
        sys.stderr.write(f"check-comm: rank {self.rank}: {step.kind}#{group} {step.label} "
                         f"{step.size_bytes} B ran past its {self.timeout_s:g} s deadline; "
                         f"never arrived: {missing}\n")
        sys.stderr.flush()
        os._exit(EXIT_DEADLINE)

    def _has(self, key: str) -> bool:
        try:
            return bool(self._store.check([key]))
        except RuntimeError:  # the store is gone (rank 0 died): nobody can be named
            return False
