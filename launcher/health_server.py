"""The launcher's side of the health channel (see health.py for the worker's side).

One listening AF_UNIX SOCK_SEQPACKET socket in the launch's private run directory; each
worker that calls `report_ready` holds one connection. The first record of a connection
must be "ready" (rank, per-attempt token, payload); after it only "beat" records count.
A record that is not a map, is too long, or comes first without being "ready" closes that
connection. Connections that have not said "ready" within HELLO_TIMEOUT_S are closed, so
a stray client holds nothing for long. Non-blocking: the service loop selects on it.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from .health import MAX_MESSAGE, decode

HELLO_TIMEOUT_S = 5.0
MAX_CONNECTIONS = 4096
MAX_PATH = 100  # sun_path is 108 bytes; longer paths use the abstract namespace


@dataclass(frozen=True)
class HealthNote:
    """What a worker told the launcher: "ready" (with token and payload), "beat", or
    "closed" (its connection ended)."""

    kind: str
    conn: int
    rank: int | None = None
    token: str = ""
    pid: int | None = None
    payload: dict | None = None


class _Conn:
    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.opened = time.monotonic()
        self.rank: int | None = None


class HealthServer:
    """Accepts worker connections and turns their records into HealthNotes."""

    def __init__(self, run_dir: Path):
        path = str(run_dir / "health.sock")
        if len(path) >= MAX_PATH:
            path = f"@pypto-health-{os.getpid()}-{os.urandom(6).hex()}"
        self.address = path  # what workers get in PYPTO_HEALTH_SOCKET
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._listener.bind(path.replace("@", "\0", 1) if path.startswith("@") else path)
        self._listener.listen(256)
        self._listener.setblocking(False)
        self._conns: dict[int, _Conn] = {}

    def fileno(self) -> int:
        return self._listener.fileno()

    def accept(self) -> list[int]:
        """Accept what is waiting; the fds of the new connections (to select on)."""
        new = []
        while True:
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return new
            except OSError:
                return new
            if len(self._conns) >= MAX_CONNECTIONS:
                sock.close()
                continue
            sock.setblocking(False)
            self._conns[sock.fileno()] = _Conn(sock)
            new.append(sock.fileno())

    def read(self, fd: int) -> list[HealthNote]:
        """Records waiting on connection `fd`; a "closed" note (and the fd is gone) at its end
        or on a malformed record."""
        conn = self._conns.get(fd)
        if conn is None:
            return []
        notes = []
        for _ in range(64):
            try:
                data = conn.sock.recv(MAX_MESSAGE)
            except (BlockingIOError, InterruptedError):
                return notes
            except OSError:
                data = b""
            message = decode(data) if data and len(data) < MAX_MESSAGE else None
            note = self._note(fd, conn, message) if message is not None else None
            if note is None:
                return [*notes, self.close(fd)]
            notes.append(note)
        return notes

    def _note(self, fd: int, conn: _Conn, message: dict) -> HealthNote | None:
        op = message.get("op")
        if conn.rank is None:
            rank, payload = message.get("rank"), message.get("payload")
            if op != "ready" or not isinstance(rank, int) or not isinstance(payload, dict):
                return None
            conn.rank = rank
            pid = message.get("pid")
            return HealthNote("ready", fd, rank, str(message.get("token", "")),
                              pid if isinstance(pid, int) else None, payload)
        if op == "beat":
            return HealthNote("beat", fd, conn.rank)
        return None

    def close(self, fd: int) -> HealthNote:
        """Drop connection `fd` (the caller unregisters it first); its "closed" note."""
        conn = self._conns.pop(fd, None)
        rank = conn.rank if conn is not None else None
        if conn is not None:
            conn.sock.close()
        return HealthNote("closed", fd, rank)

    def stale(self, now: float) -> list[int]:
        """Connections that never said "ready" within HELLO_TIMEOUT_S (to close)."""
        return [fd for fd, c in self._conns.items()
                if c.rank is None and now - c.opened > HELLO_TIMEOUT_S]

    def connections(self) -> int:
        return len(self._conns)

    def shutdown(self) -> None:
        for fd in list(self._conns):
            self.close(fd)
        self._listener.close()
        if not self.address.startswith("@"):
            try:
                os.unlink(self.address)
            except OSError:
                pass
