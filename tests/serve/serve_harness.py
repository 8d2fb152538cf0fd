"""`pypto serve` as a user runs it: a real process tree (router + launcher + replica workers)
on loopback, read through its console lines."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time

import psutil

START_TIMEOUT_S = 120.0
"""Replicas on 2 shared cores: torch import, model build and warm-up take a while."""


class ServeProcess:
    """`pypto serve ARGS --port 0`, its URL, its replicas' endpoints and its lines."""

    def __init__(self, *args: str, replicas: int, url_line: str = r"serving on (http://\S+) "
                 ) -> None:
        port = [] if "--port" in args else ["--port", "0"]
        cmd = [sys.executable, "-m", "pypto_serving.cli.entry", "serve", *port, *args]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, env=env, start_new_session=True)
        self.ps = psutil.Process(self.proc.pid)
        self.lines: list[str] = []
        self.times: list[float] = []
        """When each line of self.lines arrived (time.monotonic)."""
        self._queue: queue.Queue[tuple[float, str] | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.url = self.expect(url_line)[1]
        self.endpoints: dict[int, str] = {}
        for _ in range(replicas):
            m = self.expect(r"replica (\d+) in rotation at (\S+)")
            self.endpoints[int(m[1])] = m[2]

    def _read(self) -> None:
        for line in self.proc.stdout:  # type: ignore[union-attr]
            self._queue.put((time.monotonic(), line.rstrip("\n")))
        self._queue.put(None)

    def expect(self, pattern: str, timeout: float = START_TIMEOUT_S) -> re.Match:
        """The next line matching `pattern` (earlier lines are kept in self.lines)."""
        deadline = time.monotonic() + timeout
        rx = re.compile(pattern)
        while True:
            left = deadline - time.monotonic()
            try:
                item = self._queue.get(timeout=max(0.0, left))
            except queue.Empty:
                raise AssertionError(f"no line matching {pattern!r} in {timeout:g} s; last "
                                     "lines:\n" + "\n".join(self.lines[-30:])) from None
            if item is None:
                self._queue.put(None)
                raise AssertionError(f"pypto serve ended (rc {self.proc.wait()}) before a line "
                                     f"matching {pattern!r}:\n" + "\n".join(self.lines[-40:]))
            at, line = item
            self.times.append(at)
            self.lines.append(line)
            if m := rx.search(line):
                return m

    def worker_pids(self) -> dict[int, int]:
        """Replica -> pid of its leader, from the endpoints' ports (psutil)."""
        ports = {int(ep.rsplit(":", 1)[1]): r for r, ep in self.endpoints.items()}
        out = {}
        for child in self.ps.children(recursive=True):
            try:
                for conn in child.net_connections(kind="tcp"):
                    if conn.status == psutil.CONN_LISTEN and conn.laddr.port in ports:
                        out[ports[conn.laddr.port]] = child.pid
            except psutil.Error:
                continue
        return out

    def tree(self) -> list[psutil.Process]:
        return [self.ps, *self.ps.children(recursive=True)]

    def interrupt(self, timeout: float = 60.0) -> int:
        """Ctrl-C (SIGINT to pypto serve); its exit code."""
        self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(timeout)

    def kill_all(self) -> None:
        for p in self.tree():
            try:
                p.kill()
            except psutil.Error:
                pass
        self.proc.wait(10)


def engine_reply(endpoint: str, prompt_ids: list[int], sampling: dict,
                 timeout: float = 60.0) -> str:
    """The text a replica's EngineServer answers to one request, straight over ZMQ."""
    import zmq

    from pypto_serving.engine import protocol

    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    try:
        sock.send(protocol.encode({"op": "add", "rid": "direct", "prompt_token_ids": prompt_ids,
                                   "sampling": sampling}))
        text = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not sock.poll(1000):
                continue
            msg = protocol.decode(sock.recv(), protocol.ENGINE_OPS)
            if msg["op"] == "error":
                raise AssertionError(f"engine refused: {msg}")
            if msg["op"] == "output" and msg["rid"] == "direct":
                text.append(msg["text"])
                if msg["finished"]:
                    return "".join(text)
        raise AssertionError("no answer from the engine")
    finally:
        sock.close()
        ctx.term()
