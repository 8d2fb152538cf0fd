"""A per-rank log file that rotates by size, so a service that runs for days keeps a bounded
amount of log: `rank3.log` is the newest, `rank3.log.1` the one before, up to `backups`."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

DEFAULT_MAX_BYTES = 64 << 20
DEFAULT_BACKUPS = 3


class RotatingLog:
    """A binary append-only file that moves itself aside once it exceeds `max_bytes`."""

    def __init__(self, path: Path, max_bytes: int = DEFAULT_MAX_BYTES,
                 backups: int = DEFAULT_BACKUPS,
                 opener: Callable[[Path], BinaryIO] = lambda p: open(p, "wb")):  # noqa: SIM115
        """`opener` creates (truncates) the file at a path: at start and after each
        rotation (output.open_log, which follows no symlink, in a launch)."""
        if max_bytes < 1 or backups < 0:
            raise ValueError("max_bytes must be >= 1 and backups >= 0")
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self._open = opener
        self._file = opener(path)
        self._size = 0

    def write(self, data: bytes) -> None:
        """Append `data`, rotating at line ends so no file exceeds max_bytes (a single
        line longer than that gets a file of its own)."""
        while self._size + len(data) > self.max_bytes:
            room = max(0, self.max_bytes - self._size)
            cut = data.rfind(b"\n", 0, room) + 1
            if cut == 0 and self._size == 0:  # one over-long line: it fills a file alone
                cut = data.find(b"\n") + 1 or len(data)
            if cut:
                self._file.write(data[:cut])
                self._size += cut
                data = data[cut:]
            if not data:
                return
            self._rotate()
        self._file.write(data)
        self._size += len(data)

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    def _rotate(self) -> None:
        self._file.close()
        if self.backups == 0:
            os.unlink(self.path)
        else:
            for n in range(self.backups - 1, 0, -1):
                older = Path(f"{self.path}.{n}")
                if older.exists():
                    os.replace(older, f"{self.path}.{n + 1}")
            os.replace(self.path, f"{self.path}.1")
        self._file = self._open(self.path)
        self._size = 0
