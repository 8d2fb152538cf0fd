"""Agreeing on the master before any worker starts, with bounded waits and clear errors.

The launcher never imports torch, so it hosts no TCP store: rank 0's worker does, at
MASTER_ADDR:MASTER_PORT (env:// initialisation). What the launchers do first is a small
handshake on that same port. Node 0 listens there until every other node has said hello
(checking they hold the job's secret and agree on nnodes, processes per node, run id and
config), answers "go", and releases the listening port for rank 0's store; the accepted
connections stay open as the control channel (control.py). Other nodes retry connecting
until --rdzv-timeout. A port in use or an unreachable master is therefore a one-line
error, never a hang.

Node 0 serves every connection at once (one selector), each with its own deadline, so a
client that connects and says nothing, or says something wrong, is dropped with a warning
and cannot keep the real nodes out. wire.py has the messages and their authentication.
"""

from __future__ import annotations

import errno
import secrets
import selectors
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..core.errors import one_line
from .control import Link, keep_alive
from .errors import LaunchError

POLL = 0.2  # seconds between checks for a signal while waiting
HANDSHAKE_S = 5.0  # a connection must say hello within this long
MAX_PENDING = 32  # connections in handshake at once; the oldest is dropped beyond
INSTANCE = secrets.token_hex(16)  # this launcher process, in its hello


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


@dataclass
class _Conn:
    """A connection to node 0 in handshake (or joined, waiting for the go)."""

    sock: socket.socket
    addr: str
    nonce: str
    deadline: float
    buf: bytes = b""
    hello: object = None  # the accepted wire.Hello
    since: float = field(default_factory=time.monotonic)


class _Host:
    """Node 0's side of the rendezvous."""

    def __init__(self, port: int, me: NodeHello, secret: bytes, timeout: float,
                 check: Callable[[], None], warn: Callable[[str], None]):
        self.port, self.me, self.secret, self.timeout = port, me, secret, timeout
        from . import wire

        self.check = check
        self.warn = wire.CappedWarnings(warn, "rendezvous connections")
        self.deadline = time.monotonic() + timeout
        self.pending: dict[int, _Conn] = {}  # by fd
        self.joined: dict[int, _Conn] = {}  # by node rank
        self.sel = selectors.DefaultSelector()

    def run(self, server: socket.socket) -> dict[int, Link]:
        server.setblocking(False)
        self.sel.register(server, selectors.EVENT_READ, None)
        while len(self.joined) < self.me.nnodes - 1:
            self.check()
            now = time.monotonic()
            if now >= self.deadline:
                missing = sorted(set(range(1, self.me.nnodes)) - set(self.joined))
                raise LaunchError(
                    f"node(s) {missing} did not join at port {self.port} within "
                    f"{self.timeout:g}s; start `pypto launch --node-rank N` on every node "
                    "with the same --master-addr/--master-port and secret (or raise "
                    "--rdzv-timeout)", code=1)
            for conn in list(self.pending.values()):
                if conn.hello is None and now >= conn.deadline:
                    self.drop(conn, f"it sent no hello within {HANDSHAKE_S:g}s")
            wait = min(POLL, self.deadline - now)
            for key, _ in self.sel.select(timeout=max(wait, 0.0)):
                if key.data is None:
                    self.accept(server)
                else:
                    self.receive(key.data)
        return self.go()

    def accept(self, server: socket.socket) -> None:
        from . import wire

        while True:
            try:
                sock, addr = server.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            sock.setblocking(False)
            conn = _Conn(sock, f"{addr[0]}:{addr[1]}", wire.nonce(),
                         time.monotonic() + HANDSHAKE_S)
            if not _send_now(sock, wire.encode(wire.Challenge(hello=wire.HELLO,
                                                              nonce=conn.nonce))):
                sock.close()
                continue
            self.pending[sock.fileno()] = conn
            self.sel.register(sock, selectors.EVENT_READ, conn)
            waiting = [c for c in self.pending.values() if c.hello is None]
            if len(waiting) > MAX_PENDING:
                self.drop(min(waiting, key=lambda c: c.since),
                          f"more than {MAX_PENDING} connections were in handshake")

    def receive(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            if conn.hello is not None:  # a joined node gave up or died: it may come back
                self.warn(f"node {conn.hello.node_rank} ({conn.addr}) left before the "
                          "rendezvous completed; waiting for it again")
            self.close(conn)
            return
        if conn.hello is not None:
            self.drop(conn, "it sent more than a hello", refuse=True)
            return
        conn.buf += data
        if b"\n" not in conn.buf:
            from . import wire

            if len(conn.buf) > wire.MAX_LINE:
                self.drop(conn, f"its hello is longer than {wire.MAX_LINE} bytes",
                          refuse=True)
            return
        line = conn.buf.split(b"\n", 1)[0]
        self.hello(conn, line)

    def hello(self, conn: _Conn, line: bytes) -> None:
        from . import wire

        hello, why = wire.parse(wire.Hello, line)
        if hello is None:
            self.drop(conn, f"not a valid hello ({why})", refuse=True)
            return
        expected = wire.mac(self.secret, "hello", wire.canonical(hello.model_dump()),
                            conn.nonce)
        if not wire.verify(expected, hello.mac):
            self.drop(conn, "its hello failed authentication (is the secret the same on "
                      "every node?)", refuse=True,
                      refusal="authentication failed: the secret differs from node 0's")
            return
        n = self.me.nnodes
        if not 1 <= hello.node_rank < n:
            self.drop(conn, f"node rank {hello.node_rank} is out of range 1..{n - 1}",
                      refuse=True)
            return
        problem = _disagreement(self.me, NodeHello(
            hello.node_rank, hello.nnodes, hello.nproc_per_node, hello.run_id,
            hello.config_digest))
        if problem:
            self.refuse(conn, problem)
            raise LaunchError(f"rendezvous failed: {problem}", code=1)
        earlier = self.joined.get(hello.node_rank)
        if earlier is not None and earlier.hello.instance == hello.instance:
            self.close(earlier)  # the same launcher reconnected
        elif earlier is not None:
            problem = (f"--node-rank {hello.node_rank} was given to two launchers "
                       f"({earlier.addr} and {conn.addr}); give every node its own "
                       f"--node-rank (1..{n - 1} besides node 0)")
            self.refuse(earlier, problem)
            self.refuse(conn, problem)
            raise LaunchError(f"rendezvous failed: {problem}", code=1)
        conn.hello = hello
        self.joined[hello.node_rank] = conn

    def go(self) -> dict[int, Link]:
        """Everyone is here: answer "go" (MAC'd), keep the connections as links."""
        from . import wire

        links = {}
        for rank, conn in self.joined.items():
            proof = wire.mac(self.secret, "go", conn.nonce, conn.hello.nonce)
            self.sel.unregister(conn.sock)
            del self.pending[conn.sock.fileno()]
            _send_blocking(conn.sock, wire.encode(wire.Reply(ok=True, mac=proof)))
            keep_alive(conn.sock)
            links[rank] = Link(conn.sock, wire.link_key(self.secret, conn.nonce,
                                                        conn.hello.nonce), joiner=False)
        self.joined.clear()
        return links

    def refuse(self, conn: _Conn, why: str) -> None:
        from . import wire

        _send_now(conn.sock, wire.encode(wire.Reply(ok=False, error=why[:wire.MAX_TEXT])))

    def drop(self, conn: _Conn, why: str, refuse: bool = False,
             refusal: str | None = None) -> None:
        self.warn(f"rendezvous: dropped a connection from {conn.addr}: {why}")
        if refuse:
            self.refuse(conn, refusal or why)
        self.close(conn)

    def close(self, conn: _Conn) -> None:
        if conn.hello is not None and self.joined.get(conn.hello.node_rank) is conn:
            del self.joined[conn.hello.node_rank]
        fd = conn.sock.fileno()
        if self.pending.pop(fd, None) is not None:
            self.sel.unregister(conn.sock)
        conn.sock.close()

    def close_all(self) -> None:
        for conn in list(self.pending.values()):
            self.close(conn)
        self.sel.close()


def host(port: int, me: NodeHello, secret: bytes, timeout: float,
         check: Callable[[], None] = lambda: None,
         warn: Callable[[str], None] = lambda _: None) -> dict[int, Link]:
    """Node 0: wait for nodes 1..n-1 on `port`, check they hold `secret` and agree, tell
    them to go. Returns the link to every other node (the control channel). `check` is
    called every POLL seconds while waiting (the launcher raises there on a signal);
    `warn` gets one line per rejected connection."""
    try:
        server = _listener(port)
    except LaunchError:
        _name_a_second_node_0(port, me, secret)
        raise
    state = _Host(port, me, secret, timeout, check, warn)
    with server:
        try:
            return state.run(server)
        finally:
            state.close_all()


def _name_a_second_node_0(port: int, me: NodeHello, secret: bytes) -> None:
    """The port is taken: if a launcher of this job is node 0 there, say so."""
    from . import wire

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as conn:
            line = _read_line(conn, time.monotonic() + 1.0, lambda: None)
    except (OSError, TimeoutError):
        return
    challenge, _ = wire.parse(wire.Challenge, line or b"")
    if challenge is not None:
        raise LaunchError(f"another pypto launch is already node 0 at --master-port {port} "
                          f"on this machine: is --node-rank 0 given twice? Give every node "
                          f"its own --node-rank (0..{me.nnodes - 1})", code=1)


def join(addr: str, port: int, me: NodeHello, secret: bytes, timeout: float,
         check: Callable[[], None] = lambda: None) -> Link:
    """Node k > 0: reach node 0's launcher at addr:port (retrying) and wait for its go.

    Returns the link to node 0 (the control channel). A name that does not resolve fails
    at once; a refused or silent master is retried until `timeout`; a refusal by node 0
    (a duplicate node rank, flags that differ, a wrong secret) fails at once with its
    reason.
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
            link, last = _handshake(conn, addr, port, me, secret, deadline, check)
        except BaseException:
            conn.close()
            raise
        if link is not None:
            return link
        conn.close()
        time.sleep(POLL)


def _handshake(conn: socket.socket, addr: str, port: int, me: NodeHello, secret: bytes,
               deadline: float, check: Callable[[], None]) -> tuple[Link | None, str]:
    """One attempt: (the link, "") or (None, why to retry); LaunchError when node 0
    refuses or is not a pypto launcher of this job."""
    from . import wire

    try:
        line = _read_line(conn, min(deadline, time.monotonic() + HANDSHAKE_S), check)
    except (OSError, TimeoutError) as e:
        return None, f"no challenge from node 0: {e}"
    if line is None:
        return None, "connection closed during the handshake"
    challenge, _ = wire.parse(wire.Challenge, line)
    if challenge is None:
        raise LaunchError(f"{addr}:{port} answered but is not a pypto launcher of this "
                          "version; is another job using --master-port?", code=1)
    mine = wire.nonce()
    fields = {"hello": wire.HELLO, "node_rank": me.node_rank, "nnodes": me.nnodes,
              "nproc_per_node": me.nproc_per_node, "run_id": me.run_id,
              "config_digest": me.config_digest, "instance": INSTANCE, "nonce": mine}
    fields["mac"] = wire.mac(secret, "hello", wire.canonical(fields), challenge.nonce)
    try:
        conn.settimeout(max(0.1, deadline - time.monotonic()))
        conn.sendall(wire.encode(fields))
        line = _read_line(conn, deadline, check)
    except (OSError, TimeoutError) as e:
        return None, f"handshake failed: {e}"
    if line is None:
        return None, "connection closed during the handshake"
    reply, why = wire.parse(wire.Reply, line)
    if reply is None:
        raise LaunchError(f"node 0 at {addr}:{port} sent an invalid answer ({why})", code=1)
    if not reply.ok:
        raise LaunchError(f"rendezvous refused by node 0: {one_line(reply.error or '', 500)}",
                          code=1)
    if not wire.verify(wire.mac(secret, "go", challenge.nonce, mine), reply.mac):
        raise LaunchError(f"node 0 at {addr}:{port} answered without the job's secret; is "
                          "the secret the same on every node?", code=1)
    keep_alive(conn)
    return Link(conn, wire.link_key(secret, challenge.nonce, mine), joiner=True), ""


def _disagreement(me: NodeHello, other: NodeHello) -> str:
    for name in ("nnodes", "nproc_per_node", "run_id", "config_digest"):
        mine, theirs = getattr(me, name), getattr(other, name)
        if mine != theirs:
            what = "config" if name == "config_digest" else name
            return (f"node {other.node_rank} has {what}={one_line(repr(theirs), 200)} but "
                    f"node 0 has {one_line(repr(mine), 200)}; give every node the same "
                    "flags and config")
    return ""


def _send_now(sock: socket.socket, data: bytes) -> bool:
    """A short message to a non-blocking socket; False when it did not fit or failed."""
    try:
        return sock.send(data) == len(data)
    except OSError:
        return False


def _send_blocking(sock: socket.socket, data: bytes, timeout: float = 2.0) -> None:
    try:
        sock.setblocking(True)
        sock.settimeout(timeout)
        sock.sendall(data)
    except OSError:
        pass


def _read_line(conn: socket.socket, deadline: float, check: Callable[[], None],
               limit: int = 16 * 1024) -> bytes | None:
    """One line (without its newline); None at end of stream; TimeoutError at `deadline`;
    an over-long line is returned as it is (the parser refuses it)."""
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
            return buf
    return buf.split(b"\n", 1)[0]


def meet(plan, check: Callable[[], None], warn: Callable[[str], None]) -> dict[int, Link]:
    """This node's part of a multi-node rendezvous for `plan`: node 0 hosts, the others join;
    the links to the other launchers, by node rank. Nodes must agree on the config (a digest
    of it travels in the hello)."""
    import hashlib

    digest = ""
    if plan.config is not None:
        digest = hashlib.sha256(plan.config.model_dump_json().encode()).hexdigest()[:16]
    me = NodeHello(plan.node_rank, plan.nnodes, plan.nproc_per_node, plan.run_id, digest)
    if plan.node_rank == 0:
        return host(plan.master_port, me, plan.secret, plan.rdzv_timeout, check, warn)
    return {0: join(plan.master_addr, plan.master_port, me, plan.secret, plan.rdzv_timeout,
                    check)}
