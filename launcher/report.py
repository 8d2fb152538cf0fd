"""How a worker ended, and the failure report the launcher prints."""

from __future__ import annotations

import json
import os
import signal
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..core.errors import one_line

MAX_ERROR_FILE = 1 << 20  # bytes of a worker's error file the launcher reads
MAX_ERROR_CHARS = 2000  # of its message shown in the report


@dataclass(frozen=True)
class WorkerEnd:
    """One worker's end: who (global/local rank, node), how (exit code or signal), when."""

    rank: int
    local_rank: int
    node: int
    returncode: int
    time: float
    restart_count: int
    tail: tuple[str, ...] = field(default=())
    error: str | None = None
    status_unknown: bool = False

    def how(self) -> str:
        if self.status_unknown:
            return "ended (exit status unknown: the zygote did not report it)"
        return describe_exit(self.returncode)

    def summary(self) -> str:
        """One line naming the rank, its node and how it ended."""
        return (f"rank {self.rank} (local rank {self.local_rank}, node {self.node}) "
                f"{self.how()}")

    def render(self) -> str:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.time))
        lines = [f"  {self.summary()} at {stamp}"]
        if self.error:
            lines.append(f"  error: {self.error}")
        if self.tail:
            lines.append(f"  last {len(self.tail)} line(s) of its output:")
            lines += [f"    [rank{self.rank}]:{line}" for line in self.tail]
        else:
            lines.append("  (it printed nothing)")
        return "\n".join(lines)


def read_error_file(path: Path) -> str | None:
    """The message torch's @record wrote to TORCHELASTIC_ERROR_FILE, if any.

    The worker owns that path, so it is read with bounds: a regular file only (opened
    without following a symlink and without blocking, so a FIFO cannot stall us), at most
    MAX_ERROR_FILE bytes, and the message shown is its last line, cut and escaped.
    """
    data = read_bounded(path, MAX_ERROR_FILE)
    if data is None:
        return None
    if isinstance(data, int):
        return f"(its error file is {data} bytes, over the {MAX_ERROR_FILE} read; see {path})"
    try:
        parsed = json.loads(data)
    except ValueError:
        return None
    message = parsed.get("message") if isinstance(parsed, dict) else None
    if isinstance(message, dict):
        message = message.get("message")
    if not isinstance(message, str) or not message.strip():
        return None
    return one_line(message.strip().splitlines()[-1], MAX_ERROR_CHARS)


def read_bounded(path: Path, limit: int) -> bytes | int | None:
    """The bytes of regular file `path` if it has at most `limit`; its size if larger;
    None when it is missing or not a regular file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return None
        if info.st_size > limit:
            return info.st_size
        chunks, total = [], 0
        while total <= limit:
            chunk = os.read(fd, min(1 << 16, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        return total if total > limit else b"".join(chunks)
    except OSError:
        return None
    finally:
        os.close(fd)


def describe_exit(returncode: int) -> str:
    """'exited with code N' or 'killed by SIGNAME' for a Popen-style return code."""
    if returncode >= 0:
        return f"exited with code {returncode}"
    try:
        return f"killed by {signal.Signals(-returncode).name}"
    except ValueError:
        return f"killed by signal {-returncode}"


def failure_report(first: WorkerEnd, others: list[WorkerEnd], attempt: int,
                   attempts: int, unkillable: list[str] = ()) -> str:
    """The report of an attempt a worker of this node failed: the cause first."""
    head = (f"pypto launch: worker failure on attempt {attempt + 1} of {attempts} "
            f"(restart {first.restart_count})")
    return "\n".join([head, first.render(), *_aftermath(others, unkillable)])


def cause_report(cause: str, ends: list[WorkerEnd], attempt: int, attempts: int,
                 unkillable: list[str] = ()) -> str:
    """The report of an attempt ended by something that is no worker of this node."""
    head = f"pypto launch: attempt {attempt + 1} of {attempts} failed: {cause}"
    return "\n".join([head, *_aftermath(ends, unkillable)])


def _aftermath(others: list[WorkerEnd], unkillable: list[str]) -> list[str]:
    lines = []
    failed = [o for o in others if o.returncode not in (0, -signal.SIGTERM, -signal.SIGKILL)]
    stopped = [o for o in others if o not in failed and o.returncode != 0]
    for o in failed:
        lines.append(f"  then rank {o.rank} (local rank {o.local_rank}) {o.how()}")
    if stopped:
        ranks = ", ".join(str(r) for r in sorted(o.rank for o in stopped))
        lines.append(f"  stopped the other worker(s) of this node: rank {ranks}")
    if unkillable:
        lines.append(f"  could not kill (still running after SIGKILL): {', '.join(unkillable)}")
    return lines
