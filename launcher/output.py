"""Worker output: `[rankN]:`-prefixed lines on the console, one log file per rank, tails.

Lines are handled as bytes end to end, so a worker's encoding never breaks the launcher.
The prefix is coloured when the console is a terminal (NO_COLOR turns it off, FORCE_COLOR
on) and plain when piped.
"""

from __future__ import annotations

import os
import sys
from collections import deque
from pathlib import Path
from typing import BinaryIO

from .plan import Plan

COLOURS = (36, 33, 32, 35, 34, 31, 96, 93, 92, 95, 94, 91)
TAIL_LINES = 20
MAX_LINE = 64 * 1024


def _write(stream, data: bytes) -> None:
    buffer = getattr(stream, "buffer", None)
    if buffer is not None:
        stream.flush()
        buffer.write(data)
        buffer.flush()
    else:  # a text-only stream (a test runner's capture)
        stream.write(data.decode("utf-8", "replace"))
        stream.flush()


def _use_colour(stream) -> bool:
    if os.environ.get("NO_COLOR"):
        return False
    if os.environ.get("FORCE_COLOR"):
        return True
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class OutputRouter:
    """Splits each worker stream into lines and sends every line where the plan says."""

    def __init__(self, plan: Plan, stdout=None, stderr=None):
        self.plan = plan
        self._stdout = sys.stdout if stdout is None else stdout
        self._stderr = sys.stderr if stderr is None else stderr
        colour = {1: _use_colour(self._stdout), 2: _use_colour(self._stderr)}
        self._prefix: dict[tuple[int, int], bytes] = {}
        for local in range(plan.nproc_per_node):
            rank = plan.global_rank(local)
            text = f"[rank{rank}]:"
            for fd in (1, 2):
                if colour[fd]:
                    code = COLOURS[rank % len(COLOURS)]
                    self._prefix[local, fd] = f"\x1b[{code}m{text}\x1b[0m".encode()
                else:
                    self._prefix[local, fd] = text.encode()
        self._partial: dict[tuple[int, int], bytes] = {}
        self.tails: dict[int, deque[str]] = {
            r: deque(maxlen=TAIL_LINES) for r in range(plan.nproc_per_node)}
        self._files: dict[int, BinaryIO] = {}

    def log_path(self, local_rank: int) -> Path | None:
        if self.plan.log_dir is None:
            return None
        return self.plan.log_dir / f"rank{self.plan.global_rank(local_rank)}.log"

    def open_logs(self, restart_count: int) -> None:
        """Open every rank's log file (once per launch); restarts add a marker line."""
        if self.plan.log_dir is None:
            return
        self.plan.log_dir.mkdir(parents=True, exist_ok=True)
        for local in range(self.plan.nproc_per_node):
            if not (self.plan.logged(local, 1) or self.plan.logged(local, 2)):
                continue
            if local not in self._files:  # a new launch starts the files afresh
                self._files[local] = open(self.log_path(local), "wb")  # noqa: SIM115
            if restart_count:
                self._files[local].write(
                    f"# pypto launch: restart {restart_count}\n".encode())

    def new_attempt(self) -> None:
        """Forget the previous attempt's tails and partial lines."""
        self._partial.clear()
        for tail in self.tails.values():
            tail.clear()

    def feed(self, local_rank: int, fd: int, data: bytes) -> None:
        """Bytes read from a worker's stdout (fd 1) or stderr (fd 2)."""
        buf = self._partial.pop((local_rank, fd), b"") + data
        lines = buf.split(b"\n")
        rest = lines.pop()
        while len(rest) > MAX_LINE:
            lines.append(rest[:MAX_LINE])
            rest = rest[MAX_LINE:]
        if rest:
            self._partial[local_rank, fd] = rest
        self._emit(local_rank, fd, lines)

    def close_stream(self, local_rank: int, fd: int) -> None:
        """End of a stream: a last line without newline is still a line."""
        rest = self._partial.pop((local_rank, fd), b"")
        if rest:
            self._emit(local_rank, fd, [rest])

    def _emit(self, local_rank: int, fd: int, lines: list[bytes]) -> None:
        if not lines:
            return
        tail = self.tails[local_rank]
        for line in lines:
            tail.append(line.decode("utf-8", "replace"))
        log = self._files.get(local_rank)
        if log is not None and self.plan.logged(local_rank, fd):
            log.write(b"".join(line + b"\n" for line in lines))
            log.flush()
        redirected = self.plan.redirects[local_rank][fd - 1]
        shown = self.plan.shown_ranks is None or local_rank in self.plan.shown_ranks
        if redirected or not shown:
            return
        prefix = self._prefix[local_rank, fd]
        sink = self._stdout if fd == 1 else self._stderr
        try:
            _write(sink, b"".join(prefix + line + b"\n" for line in lines))
        except (BrokenPipeError, ValueError):
            pass

    def flush_all(self) -> None:
        for local_rank, fd in list(self._partial):
            self.close_stream(local_rank, fd)

    def close(self) -> None:
        self.flush_all()
        for f in self._files.values():
            f.close()
        self._files.clear()

    def say(self, message: str) -> None:
        """A launcher message (warning, report) on stderr."""
        try:
            self._stderr.write(message if message.endswith("\n") else message + "\n")
            self._stderr.flush()
        except (BrokenPipeError, ValueError):
            pass
