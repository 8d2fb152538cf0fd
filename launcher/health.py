"""A worker's side of the launcher's health channel: "ready" once, then heartbeats.

A worker of a service launch (`pypto launch --service`, `launcher.service.ServiceLaunch`)
calls `report_ready(payload)` once it has loaded and warmed up. That connects to the
launcher's health socket (an AF_UNIX SOCK_SEQPACKET socket in the launch's private run
directory, named by PYPTO_HEALTH_SOCKET), says who it is (PYPTO_RANK and the per-attempt
token PYPTO_HEALTH_TOKEN), hands over `payload` (say, the engine's endpoint) and starts a
daemon thread that sends a heartbeat every PYPTO_HEALTH_INTERVAL_S seconds. A worker whose
heartbeats stop for longer than the launch's deadline (its process stopped, wedged holding
the GIL, or lost) is treated as hung. Outside a service launch (no PYPTO_HEALTH_SOCKET, as
under plain `pypto launch` or torchrun) `report_ready` does nothing.

Messages are msgpack maps, one per SEQPACKET record, at most MAX_MESSAGE bytes:
{"op": "ready", "rank", "token", "pid", "payload"} and then {"op": "beat"}. Stdlib and
msgpack only: importable without torch.
"""

from __future__ import annotations

import os
import socket
import threading

import msgpack

SOCKET_ENV = "PYPTO_HEALTH_SOCKET"
TOKEN_ENV = "PYPTO_HEALTH_TOKEN"
INTERVAL_ENV = "PYPTO_HEALTH_INTERVAL_S"
RANK_ENV = "PYPTO_RANK"
MAX_MESSAGE = 64 * 1024
DEFAULT_INTERVAL_S = 0.5
CONNECT_TIMEOUT_S = 5.0


class HealthChannelError(RuntimeError):
    """report_ready could not reach the launcher, or its payload cannot be sent."""


def encode(message: dict) -> bytes:
    """One health message as msgpack; HealthChannelError if it is not plain data or too big."""
    try:
        data = msgpack.packb(message, use_bin_type=True)
    except (TypeError, ValueError) as e:
        raise HealthChannelError(f"report_ready payload is not plain data (str, int, float, "
                                 f"bool, None, bytes, lists and dicts of them): {e}") from None
    if len(data) >= MAX_MESSAGE:
        raise HealthChannelError(f"report_ready payload is {len(data)} bytes encoded; the "
                                 f"limit is {MAX_MESSAGE - 1}: send a reference, not the data")
    return data


def decode(data: bytes) -> dict | None:
    """A received record as a map; None when it is not one (the sender is then dropped)."""
    try:
        message = msgpack.unpackb(data, raw=False, strict_map_key=False)
    except (ValueError, msgpack.UnpackException):
        return None
    return message if isinstance(message, dict) else None


class _Reporter:
    """This process's connection to the launcher and its heartbeat thread (at most one)."""

    def __init__(self, sock: socket.socket, interval: float):
        self.sock = sock
        self.interval = interval
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._beat, name="pypto-heartbeat", daemon=True)

    def _beat(self) -> None:
        beat = encode({"op": "beat"})
        while not self.stopped.wait(self.interval):
            try:
                self.sock.send(beat)
            except OSError:  # the launcher is gone or closed us: nothing left to tell
                return


_reporter: _Reporter | None = None
_pid: int | None = None
_lock = threading.Lock()


def in_service_launch() -> bool:
    """Whether this process is a worker of a service launch (the launcher listens)."""
    return bool(os.environ.get(SOCKET_ENV))


def report_ready(payload: dict | None = None) -> None:
    """Tell the launcher this worker is loaded and warmed up, then heartbeat until exit.

    `payload` (plain data, under 64 KiB encoded) reaches the launch's caller in the
    group's "ready" event. Call it once per worker; later calls do nothing. A no-op outside
    a service launch. Raises HealthChannelError when the launcher cannot be reached.
    """
    global _reporter, _pid
    path = os.environ.get(SOCKET_ENV)
    if not path:
        return
    with _lock:
        if _reporter is not None and _pid == os.getpid():
            return
        if payload is not None and not isinstance(payload, dict):
            raise HealthChannelError(f"report_ready payload must be a dict, not "
                                     f"{type(payload).__name__}")
        try:
            rank = int(os.environ[RANK_ENV])
            interval = float(os.environ.get(INTERVAL_ENV) or DEFAULT_INTERVAL_S)
        except (KeyError, ValueError):
            raise HealthChannelError(f"{SOCKET_ENV} is set but {RANK_ENV}/{INTERVAL_ENV} are "
                                     "missing or not numbers: start workers with the "
                                     "launcher, not by hand") from None
        message = encode({"op": "ready", "rank": rank, "token": os.environ.get(TOKEN_ENV, ""),
                          "pid": os.getpid(), "payload": payload or {}})
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        sock.settimeout(CONNECT_TIMEOUT_S)
        try:
            sock.connect("\0" + path[1:] if path.startswith("@") else path)
            sock.send(message)
        except OSError as e:
            sock.close()
            raise HealthChannelError(f"cannot reach the launcher's health socket {path}: "
                                     f"{e.strerror or e}") from None
        sock.settimeout(CONNECT_TIMEOUT_S)
        reporter = _Reporter(sock, interval)
        reporter.thread.start()
        _reporter, _pid = reporter, os.getpid()


__all__ = ["HealthChannelError", "in_service_launch", "report_ready"]
