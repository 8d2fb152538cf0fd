"""Agreeing on the master before any worker starts, with bounded waits and clear errors.

The launcher never imports torch, so it hosts no TCP store: rank 0's worker does, at
MASTER_ADDR:MASTER_PORT (env:// initialisation). What the launchers do first is a small
handshake on that same port. Node 0 listens there until every other node has said hello
(checking they agree on nnodes, processes per node, run id and config), answers "go", and
releases the port for rank 0's store. Other nodes retry connecting until --rdzv-timeout.
A port in use or an unreachable master is therefore a one-line error, never a hang.
"""

from __future__ import annotations

import errno
import json
import socket
import time
from dataclasses import asdict, dataclass

from .errors import LaunchError

HELLO = "pypto-launch-rdzv-1"


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


def host(port: int, me: NodeHello, timeout: float) -> None:
    """Node 0: wait for nodes 1..n-1 on `port`, check they agree, tell them to go."""
    deadline = time.monotonic() + timeout
    peers: dict[int, socket.socket] = {}
    problems: list[str] = []
    with _listener(port) as server:
        try:
            while len(peers) < me.nnodes - 1:
                left = deadline - time.monotonic()
                if left <= 0:
                    missing = sorted(set(range(1, me.nnodes)) - set(peers))
                    raise LaunchError(
                        f"node(s) {missing} did not join at port {port} within {timeout:g}s; "
                        "start `pypto launch --node-rank N` on every node with the same "
                        "--master-addr/--master-port (or raise --rdzv-timeout)", code=1)
                server.settimeout(left)
                try:
                    conn, _ = server.accept()
                except TimeoutError:
                    continue
                hello = _read_hello(conn, deadline)
                if hello is None:
                    conn.close()
                    continue
                problem = _disagreement(me, hello)
                if hello.node_rank in peers or hello.node_rank == 0:
                    problem = f"node rank {hello.node_rank} joined twice"
                if problem:
                    problems.append(problem)
                    _send(conn, {"ok": False, "error": problem})
                    conn.close()
                    raise LaunchError(f"rendezvous failed: {problem}", code=1)
                peers[hello.node_rank] = conn
            for conn in peers.values():
                _send(conn, {"ok": True})
        finally:
            for conn in peers.values():
                conn.close()


def join(addr: str, port: int, me: NodeHello, timeout: float) -> None:
    """Node k > 0: reach node 0's launcher at addr:port (retrying) and wait for its go."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise LaunchError(
                f"master {addr}:{port} unreachable for {timeout:g}s ({last}); check that "
                "node 0 runs `pypto launch --node-rank 0` with the same --master-addr/"
                "--master-port, and that the port is open", code=1)
        try:
            conn = socket.create_connection((addr, port), timeout=min(left, 2.0))
        except OSError as e:
            last = e.strerror or str(e)
            time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
            continue
        with conn:
            try:
                _send(conn, {"hello": HELLO, **asdict(me)})
                conn.settimeout(max(0.1, deadline - time.monotonic()))
                reply = _read_line(conn)
            except (OSError, TimeoutError) as e:
                last = f"handshake failed: {e}"
                time.sleep(0.2)
                continue
        if reply is None:
            last = "connection closed during the handshake"
            time.sleep(0.2)
            continue
        if not isinstance(reply, dict) or "ok" not in reply:
            raise LaunchError(f"{addr}:{port} answered but is not a pypto launcher; is another "
                              "job using --master-port?", code=1)
        if not reply["ok"]:
            raise LaunchError(f"rendezvous refused by node 0: {reply.get('error')}", code=1)
        return


def _disagreement(me: NodeHello, other: NodeHello) -> str:
    for name in ("nnodes", "nproc_per_node", "run_id", "config_digest"):
        mine, theirs = getattr(me, name), getattr(other, name)
        if mine != theirs:
            what = "config" if name == "config_digest" else name
            return (f"node {other.node_rank} has {what}={theirs!r} but node 0 has {mine!r}; "
                    "give every node the same flags and config")
    return ""


def _read_hello(conn: socket.socket, deadline: float) -> NodeHello | None:
    conn.settimeout(max(0.1, min(5.0, deadline - time.monotonic())))
    try:
        data = _read_line(conn)
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


def _read_line(conn: socket.socket, limit: int = 65536) -> object | None:
    buf = b""
    while b"\n" not in buf:
        chunk = conn.recv(4096)
        if not chunk:
            return None
        buf += chunk
        if len(buf) > limit:
            return {}
    try:
        return json.loads(buf.split(b"\n", 1)[0])
    except ValueError:
        return {}
