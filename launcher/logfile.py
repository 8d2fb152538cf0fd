"""A per-rank log file that rotates by size, so a service that runs for days keeps a bounded
amount of log: `rank3.log` is the newest, `rank3.log.1` the one before, up to `backups`."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_MAX_BYTES = 64 << 20
DEFAULT_BACKUPS = 3


class RotatingLog:
    """A binary append-only file that moves itself aside once it exceeds `max_bytes`."""

    def __init__(self, path: Path, max_bytes: int = DEFAULT_MAX_BYTES,
                 backups: int = DEFAULT_BACKUPS):
        if max_bytes < 1 or backups < 0:
            raise ValueError("max_bytes must be >= 1 and backups >= 0")
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self._file = open(path, "wb")  # noqa: SIM115 - closed by close()
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
        self._file = open(self.path, "wb")  # noqa: SIM115
        self._size = 0
