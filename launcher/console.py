"""A console stream the supervisor can write to without ever waiting for its reader.

Writes are queued and a writer thread moves them to the file descriptor, so a console
nobody reads (a full pipe, a stopped terminal) never delays supervision. The queue is
bounded: worker output beyond QUEUE_BYTES is dropped, and a marker line saying how much
was dropped takes its place once the reader catches up. The launcher's own messages
(reports, warnings) are never dropped. A stream without a file descriptor (a test
runner's capture) is written directly.
"""

from __future__ import annotations

import collections
import os
import threading
import time
from typing import TextIO

QUEUE_BYTES = 8 << 20  # worker output held for a slow console, per stream
WRITE_SLICE = 1 << 16  # progress is seen per slice
FLUSH_STALL = 5.0  # at close: give up when the reader took nothing for this long


def dropped_marker(count: int) -> bytes:
    return (f"[pypto launch: {count} bytes of worker output dropped here: the console "
            "was not reading]\n").encode()


class ConsoleWriter:
    """Bytes to `stream` in order, from any thread, never blocking the caller."""

    def __init__(self, stream: TextIO):
        self._stream = stream
        self._fd = _fileno(stream)
        self._queue: collections.deque[bytes] = collections.deque()
        self._queued = 0
        self._dropped = 0
        self.dropped_total = 0  # bytes of worker output dropped because the reader lagged
        self._progress = 0
        self._broken = False
        self._closing = False
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        if self._fd is not None:
            try:
                stream.flush()  # what the process printed before us comes first
            except (OSError, ValueError):
                pass
            self._thread = threading.Thread(target=self._run, name="pypto-console",
                                            daemon=True)
            self._thread.start()

    def write(self, data: bytes, droppable: bool = True) -> None:
        """Queue `data`; worker output (`droppable`) is dropped when the queue is full."""
        if not data:
            return
        if self._fd is None:
            self._write_text(data)
            return
        with self._cond:
            if self._broken:
                return
            if droppable and self._queued + len(data) > QUEUE_BYTES:
                self._dropped += len(data)
                self.dropped_total += len(data)
                return
            if self._dropped:
                marker = dropped_marker(self._dropped)
                self._dropped = 0
                self._queue.append(marker)
                self._queued += len(marker)
            self._queue.append(data)
            self._queued += len(data)
            self._cond.notify()

    def close(self, stall: float = FLUSH_STALL) -> None:
        """Wait until everything queued is written, giving up when the reader has taken
        nothing for `stall` seconds (what is left is then lost)."""
        if self._thread is None:
            return
        with self._cond:
            if self._dropped:
                self._queue.append(dropped_marker(self._dropped))
                self._dropped = 0
            self._closing = True
            self._cond.notify()
            seen, since = self._progress, time.monotonic()
            while self._queue and not self._broken:
                if self._progress != seen:
                    seen, since = self._progress, time.monotonic()
                elif time.monotonic() - since >= stall:
                    self._broken = True
                    break
                self._cond.wait(0.05)
        self._thread.join(0.1)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue or self._broken:
                    return
                data = memoryview(self._queue[0])
            try:
                while data:
                    n = os.write(self._fd, data[:WRITE_SLICE])
                    data = data[n:]
                    with self._cond:
                        self._progress += n
            except OSError:  # the reader went away (EPIPE) or the fd is unusable
                with self._cond:
                    self._broken = True
                    self._queue.clear()
                    self._cond.notify_all()
                return
            with self._cond:
                done = self._queue.popleft()
                self._queued -= len(done)
                self._cond.notify_all()

    def _write_text(self, data: bytes) -> None:
        try:
            self._stream.write(data.decode("utf-8", "replace"))
            self._stream.flush()
        except (OSError, ValueError):
            pass


def _fileno(stream: TextIO) -> int | None:
    try:
        return stream.fileno()
    except (AttributeError, OSError, ValueError):
        return None
