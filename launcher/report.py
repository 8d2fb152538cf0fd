"""How a worker ended, and the failure report the launcher prints."""

from __future__ import annotations

import json
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path


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
    """The message torch's @record wrote to TORCHELASTIC_ERROR_FILE, if any."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    message = data.get("message") if isinstance(data, dict) else None
    if isinstance(message, dict):
        message = message.get("message")
    if not isinstance(message, str) or not message.strip():
        return None
    return message.strip().splitlines()[-1]


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
