"""Agreeing on the master before any worker starts, with bounded waits and clear errors.

The launcher never imports torch, so it hosts no TCP store: rank 0's worker does, at
MASTER_ADDR:MASTER_PORT (env:// initialisation). What the launchers do first is a small
handshake on that same port. Node 0 listens there until every other node has said hello
(checking they agree on nnodes, processes per node, run id and config), answers "go", and
releases the listening port for rank 0's store; the accepted connections stay open as the
control channel (control.py). Other nodes retry connecting until --rdzv-timeout.
A port in use or an unreachable master is therefore a one-line error, never a hang.
"""

from __future__ import annotations

import errno
import json
import socket
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from .control import keep_alive
from .errors import LaunchError

HELLO = "pypto-launch-rdzv-1"
POLL = 0.2  # seconds between checks for a signal while waiting


@dataclass(frozen=True)
class NodeHello:
    """What each node tells node 0; everything must match except the node rank."""

    node_rank: int
    nnodes: int
    nproc_per_node: int
    run_id: str
    config_digest: str


def check_port_free(port: int) -> None:
    """Raise LaunchError when something on this machine already listens on `port`."""
    with _listener(port):
        pass


def _listener(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("", port))
        sock.listen(64)
    except OSError as e:
        sock.close()
        if e.errno in (errno.EADDRINUSE, errno.EACCES):
            raise LaunchError(
                f"--master-port {port} is already in use on this machine; pick a free port "
                "(or use --standalone to let pypto choose one)") from None
        raise LaunchError(f"cannot listen on --master-port {port}: {e.strerror}") from None
    return sock


def host(port: int, me: NodeHello, timeout: float,
         check: Callable[[], None] = lambda: None) -> dict[int, socket.socket]:
    """Node 0: wait for nodes 1..n-1 on `port`, check they agree, tell them to go.

    Returns the open connection of every other node (the control channel). `check` is
    called every POLL seconds while waiting (the launcher raises there on a signal).
    """
    deadline = time.monotonic() + timeout
    peers: dict[int, socket.socket] = {}
    ok = False
    with _listener(port) as server:
        try:
            while len(peers) < me.nnodes - 1:
                check()
                left = deadline - time.monotonic()
                if left <= 0:
                    missing = sorted(set(range(1, me.nnodes)) - set(peers))
                    raise LaunchError(
                        f"node(s) {missing} did not join at port {port} within {timeout:g}s; "
                        "start `pypto launch --node-rank N` on every node with the same "
                        "--master-addr/--master-port (or raise --rdzv-timeout)", code=1)
                server.settimeout(min(left, POLL))
                try:
                    conn, _ = server.accept()
                except TimeoutError:
                    continue
                hello = _read_hello(conn, deadline, check)
                if hello is None:
                    conn.close()
                    continue
                problem = _disagreement(me, hello)
                if hello.node_rank in peers or hello.node_rank == 0:
                    problem = f"node rank {hello.node_rank} joined twice"
                if problem:
                    _send(conn, {"ok": False, "error": problem})
                    conn.close()
                    raise LaunchError(f"rendezvous failed: {problem}", code=1)
                peers[hello.node_rank] = conn
            for conn in peers.values():
                _send(conn, {"ok": True})
                keep_alive(conn)
            ok = True
            return peers
        finally:
            if not ok:
                for conn in peers.values():
                    conn.close()


def join(addr: str, port: int, me: NodeHello, timeout: float,
         check: Callable[[], None] = lambda: None) -> socket.socket:
    """Node k > 0: reach node 0's launcher at addr:port (retrying) and wait for its go.

    Returns the open connection to node 0 (the control channel). A name that does not
    resolve fails at once; a refused or silent master is retried until `timeout`.
    """
    deadline = time.monotonic() + timeout
    last = "no answer"
    while True:
        check()
        left = deadline - time.monotonic()
        if left <= 0:
            raise LaunchError(
                f"master {addr}:{port} unreachable for {timeout:g}s ({last}); check that "
                "node 0 runs `pypto launch --node-rank 0` with the same --master-addr/"
                "--master-port, and that the port is open", code=1)
        try:
            conn = socket.create_connection((addr, port), timeout=min(left, 1.0))
        except socket.gaierror as e:
            if e.errno == socket.EAI_AGAIN:  # the resolver is busy or down: retry
                last = e.strerror or str(e)
                time.sleep(POLL)
                continue
            raise LaunchError(f"--master-addr {addr!r} does not resolve ({e.strerror}); give "
                              "node 0's host name or IP address", code=1) from None
        except OSError as e:
            last = e.strerror or str(e)
            time.sleep(min(POLL, max(0.0, deadline - time.monotonic())))
            continue
        try:
            _send(conn, {"hello": HELLO, **asdict(me)})
            reply = _read_line(conn, deadline, check)
        except (OSError, TimeoutError) as e:
            conn.close()
            last = f"handshake failed: {e}"
            time.sleep(POLL)
            continue
        except BaseException:
            conn.close()
            raise
        if reply is None:
            conn.close()
            last = "connection closed during the handshake"
            time.sleep(POLL)
            continue
        if not isinstance(reply, dict) or "ok" not in reply:
            conn.close()
            raise LaunchError(f"{addr}:{port} answered but is not a pypto launcher; is another "
                              "job using --master-port?", code=1)
        if not reply["ok"]:
            conn.close()
            raise LaunchError(f"rendezvous refused by node 0: {reply.get('error')}", code=1)
        keep_alive(conn)
        return conn


def _disagreement(me: NodeHello, other: NodeHello) -> str:
    for name in ("nnodes", "nproc_per_node", "run_id", "config_digest"):
        mine, theirs = getattr(me, name), getattr(other, name)
        if mine != theirs:
            what = "config" if name == "config_digest" else name
            return (f"node {other.node_rank} has {what}={theirs!r} but node 0 has {mine!r}; "
                    "give every node the same flags and config")
    return ""


def _read_hello(conn: socket.socket, deadline: float,
                check: Callable[[], None]) -> NodeHello | None:
    try:
        data = _read_line(conn, min(deadline, time.monotonic() + 5.0), check)
    except (OSError, TimeoutError):
        return None
    if not isinstance(data, dict) or data.pop("hello", None) != HELLO:
        return None
    try:
        return NodeHello(**data)
    except TypeError:
        return None


def _send(conn: socket.socket, message: dict) -> None:
    try:
        conn.sendall(json.dumps(message).encode() + b"\n")
    except OSError:
        pass


def _read_line(conn: socket.socket, deadline: float, check: Callable[[], None],
               limit: int = 65536) -> object | None:
    """One JSON line; None at end of stream; TimeoutError at `deadline`."""
    buf = b""
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("timed out")
        conn.settimeout(min(left, POLL))
        try:
            chunk = conn.recv(4096)
        except TimeoutError:
            check()
            continue
        if not chunk:
            return None
        buf += chunk
        if len(buf) > limit:
            return {}
    try:
        return json.loads(buf.split(b"\n", 1)[0])
    except ValueError:
        return {}
