"""Worker output: `[rankN]:`-prefixed lines on the console, one log file per rank, tails.

Lines are handled as bytes end to end, so a worker's encoding never breaks the launcher.
The prefix is coloured when the console is a terminal (NO_COLOR turns it off, FORCE_COLOR
on) and plain when piped.
"""

from __future__ import annotations

import os
import stat
import sys
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from .console import ConsoleWriter
from .plan import Plan

COLOURS = (36, 33, 32, 35, 34, 31, 96, 93, 92, 95, 94, 91)
TAIL_LINES = 20
TAIL_CHARS = 2000  # of one line kept for the failure report
MAX_LINE = 64 * 1024  # a longer line is passed on in pieces, never split
HOLD_BYTES = 1 << 20  # others' lines held back while one stream is inside a long line

StreamKey = tuple[int, int]  # (local rank, fd)


def _use_colour(stream) -> bool:
    if os.environ.get("NO_COLOR"):
        return False
    if os.environ.get("FORCE_COLOR"):
        return True
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class _Sink:
    """One destination (a console stream or a rank's log file) shared by several worker
    streams. A stream that has written part of a line owns the sink until the line ends;
    meanwhile the other streams' lines wait (up to HOLD_BYTES), so lines are never mixed
    and never split. Past that bound the long line is ended with a newline and its rest
    starts a new prefixed line."""

    def __init__(self, write: Callable[[bytes], None], prefixes: dict[StreamKey, bytes],
                 target: object = None):
        self._write = write
        self.target = target  # what `write` writes to, when the owner needs to know
        self._prefixes = prefixes
        self._owner: StreamKey | None = None
        self._held: list[tuple[StreamKey, list[bytes], bool, bool]] = []
        self._held_bytes = 0
        self._restart: set[StreamKey] = set()  # broken long lines: next piece gets a prefix

    def put(self, key: StreamKey, lines: list[bytes], continues: bool, open_end: bool) -> None:
        """`lines` of stream `key`: the first continues a line begun earlier when
        `continues`; the last is left open (no newline yet) when `open_end`."""
        if self._owner is not None and self._owner != key:
            self._held.append((key, lines, continues, open_end))
            self._held_bytes += sum(len(line) + 1 for line in lines)
            if self._held_bytes > HOLD_BYTES:
                self._write(b"\n")
                self._restart.add(self._owner)
                self._owner = None
                self._release()
            return
        if key in self._restart:
            self._restart.discard(key)
            continues = False
        prefix = self._prefixes.get(key, b"")
        parts = []
        for i, line in enumerate(lines):
            if not (i == 0 and continues):
                parts.append(prefix)
            parts.append(line)
            if not (open_end and i == len(lines) - 1):
                parts.append(b"\n")
        self._write(b"".join(parts))
        self._owner = key if open_end else None
        if self._owner is None and self._held:
            self._release()

    def _release(self) -> None:
        held, self._held, self._held_bytes = self._held, [], 0
        for item in held:
            self.put(*item)


class OutputRouter:
    """Splits each worker stream into lines and sends every line where the plan says, byte
    for byte: long lines pass in pieces without a newline added, the console prefix only
    starts lines. Console writes never block (console.py)."""

    def __init__(self, plan: Plan, stdout=None, stderr=None):
        self.plan = plan
        out = sys.stdout if stdout is None else stdout
        err = sys.stderr if stderr is None else stderr
        colour = {1: _use_colour(out), 2: _use_colour(err)}
        self._console = {1: ConsoleWriter(out), 2: ConsoleWriter(err)}
        prefixes: dict[int, dict[StreamKey, bytes]] = {1: {}, 2: {}}
        for local in range(plan.nproc_per_node):
            rank = plan.global_rank(local)
            text = f"[rank{rank}]:"
            for fd in (1, 2):
                if colour[fd]:
                    code = COLOURS[rank % len(COLOURS)]
                    prefixes[fd][local, fd] = f"\x1b[{code}m{text}\x1b[0m".encode()
                else:
                    prefixes[fd][local, fd] = text.encode()
        self._console_sinks = {fd: _Sink(self._console[fd].write, prefixes[fd])
                               for fd in (1, 2)}
        self._partial: dict[StreamKey, bytes] = {}
        self._mid: set[StreamKey] = set()  # streams inside a line already partly passed on
        self._tail_open: dict[StreamKey, bytes] = {}
        self.tails: dict[int, deque[str]] = {
            r: deque(maxlen=TAIL_LINES) for r in range(plan.nproc_per_node)}
        self._files: dict[int, BinaryIO] = {}
        self._log_sinks: dict[int, _Sink] = {}

    def log_path(self, local_rank: int) -> Path | None:
        if self.plan.log_dir is None:
            return None
        return self.plan.log_dir / f"rank{self.plan.global_rank(local_rank)}.log"

    def open_logs(self, restart_count: int) -> None:
        """Open every rank's log file (once per launch); restarts add a marker line.
        An existing rank<N>.log is replaced, never followed: only a regular file is
        opened (plan.py refuses a log directory with anything else there)."""
        if self.plan.log_dir is None:
            return
        for local in range(self.plan.nproc_per_node):
            if not (self.plan.logged(local, 1) or self.plan.logged(local, 2)):
                continue
            if local not in self._files:  # a new launch starts the files afresh
                self._files[local] = open_log(self.log_path(local))
            if restart_count:
                self._files[local].write(
                    f"# pypto launch: restart {restart_count}\n".encode())

    def new_attempt(self) -> None:
        """Forget the previous attempt's tails and partial lines."""
        self._partial.clear()
        self._mid.clear()
        self._tail_open.clear()
        for tail in self.tails.values():
            tail.clear()

    def feed(self, local_rank: int, fd: int, data: bytes) -> None:
        """Bytes read from a worker's stdout (fd 1) or stderr (fd 2)."""
        key = (local_rank, fd)
        buf = self._partial.pop(key, b"") + data
        lines = buf.split(b"\n")
        rest = lines.pop()
        if len(rest) > MAX_LINE:  # pass the long line on now, without ending it
            lines.append(rest)
            self._emit(key, lines, open_end=True)
        else:
            if rest:
                self._partial[key] = rest
            if lines:
                self._emit(key, lines, open_end=False)

    def close_stream(self, local_rank: int, fd: int) -> None:
        """End of a stream: a last line without newline is still a line."""
        key = (local_rank, fd)
        rest = self._partial.pop(key, b"")
        if rest or key in self._mid:
            self._emit(key, [rest], open_end=False)

    def _emit(self, key: StreamKey, lines: list[bytes], open_end: bool) -> None:
        local_rank, fd = key
        continues = key in self._mid
        self._remember(key, lines, continues, open_end)
        if open_end:
            self._mid.add(key)
        else:
            self._mid.discard(key)
        log = self._log_sink(local_rank)
        if log is not None and self.plan.logged(local_rank, fd):
            log.put(key, lines, continues, open_end)
            self._files[local_rank].flush()
        redirected = self.plan.redirects[local_rank][fd - 1]
        shown = self.plan.shown_ranks is None or local_rank in self.plan.shown_ranks
        if not redirected and shown:
            self._console_sinks[fd].put(key, lines, continues, open_end)

    def _log_sink(self, local_rank: int) -> _Sink | None:
        """The sink over the rank's log file, for whatever file `_files` holds."""
        f = self._files.get(local_rank)
        if f is None:
            return None
        sink = self._log_sinks.get(local_rank)
        if sink is None or sink.target is not f:
            sink = self._log_sinks[local_rank] = _Sink(f.write, {}, target=f)
        return sink

    def _remember(self, key: StreamKey, lines: list[bytes], continues: bool,
                  open_end: bool) -> None:
        """The tail for the failure report: whole lines, each cut at TAIL_CHARS."""
        tail = self.tails[key[0]]
        for i, line in enumerate(lines):
            if i == 0 and continues:
                line = self._tail_open.pop(key, b"") + line[:TAIL_CHARS]
            if open_end and i == len(lines) - 1:
                self._tail_open[key] = line[:TAIL_CHARS]
                break
            text = line[:TAIL_CHARS].decode("utf-8", "replace")
            tail.append(text + (" [...]" if len(line) > TAIL_CHARS else ""))

    def flush_all(self) -> None:
        for local_rank, fd in list(self._partial) + list(self._mid):
            self.close_stream(local_rank, fd)

    def close(self) -> None:
        """End every stream, close the logs, and give the console what is queued (bounded:
        see ConsoleWriter.close)."""
        self.flush_all()
        for f in self._files.values():
            f.close()
        self._files.clear()
        self._log_sinks.clear()
        for console in self._console.values():
            console.close()

    def say(self, message: str) -> None:
        """A launcher message (warning, report) on stderr; never dropped."""
        text = message if message.endswith("\n") else message + "\n"
        self._console[2].write(text.encode("utf-8", "backslashreplace"), droppable=False)


def open_log(path: Path) -> BinaryIO:
    """Create or truncate `path` for writing without following a symlink or blocking on a
    FIFO; anything but a regular file is refused (OSError)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                 0o644)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{path} is not a regular file")
        os.ftruncate(fd, 0)
        os.set_blocking(fd, True)
        return open(fd, "wb", closefd=True)  # noqa: SIM115
    except BaseException:
        os.close(fd)
        raise
