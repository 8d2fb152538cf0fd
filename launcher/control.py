"""The launchers' control channel: the rendezvous sockets, kept open for the whole launch.

Node 0 is the hub: every other node holds one connection to it. A node whose group fails,
or whose launcher gets a signal, sends `stop` (with a one-line reason naming the node and
rank); node 0 relays it to every other node, and each node stops its workers. A node whose
workers all exited 0 sends `done` before closing. End of stream without `done` (a launcher
killed, a host gone: TCP keepalive notices that within ~15 s) is a stop too.

Messages are JSON lines (wire.ControlMessage): {"op": "stop", "node": N, "why": TEXT, "seq":
S, "mac": M} or {"op": "done", ...}, MAC'd with the link's key over the direction and the
sequence number. A line that does not parse, verify or come in sequence is dropped with a
warning; a reason is escaped before anyone prints it.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass

from ..core.errors import one_line

KEEPALIVE = {"TCP_KEEPIDLE": 5, "TCP_KEEPINTVL": 3, "TCP_KEEPCNT": 3}
MAX_BUFFER = 64 * 1024  # of a partial line from one peer
SEND_TIMEOUT = 2.0


@dataclass(frozen=True)
class RemoteStop:
    """Why another node asked every node to stop (`why` is safe to print)."""

    node: int
    why: str


@dataclass
class Link:
    """One authenticated node 0 <-> node k connection: its socket, its key, and the next
    sequence numbers each way. `joiner`: this side is node k (messages go "up")."""

    sock: socket.socket
    key: bytes
    joiner: bool
    sent: int = 0
    received: int = 0


def keep_alive(sock: socket.socket) -> None:
    """Make a silent peer (host down, cable out) end the connection in seconds, not hours."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in KEEPALIVE.items():
        option = getattr(socket, name, None)
        if option is not None:
            sock.setsockopt(socket.IPPROTO_TCP, option, value)


class LinkMesh:
    """This node's ends of the launchers' links (node 0: one to every other node; another
    node: one to node 0), read as lines without blocking. The control channel and the
    service's group channel are both one of these; `what` names their messages in warnings,
    `max_line` bounds a line."""

    def __init__(self, node_rank: int, nnodes: int, links: dict[int, Link],
                 warn: Callable[[str], None], what: str, max_line: int):
        from . import wire

        self.node_rank = node_rank
        self.nnodes = nnodes
        self.max_line = max_line
        self._links = dict(links)
        self._buffers: dict[int, bytes] = {node: b"" for node in links}
        self._done: set[int] = set()
        self.warn = wire.CappedWarnings(warn, what)
        self.stopped: RemoteStop | None = None
        for link in self._links.values():
            link.sock.setblocking(False)

    def sockets(self) -> dict[int, socket.socket]:
        """The open connections, by the node rank at the other end."""
        return {node: link.sock for node, link in self._links.items()}

    def _receive_lines(self, node: int) -> list[bytes] | None:
        """The complete lines that arrived from `node` ([] for none yet); None when its
        connection just ended (it is dropped: see _went_away)."""
        link = self._links.get(node)
        if link is None:
            return []
        try:
            data = link.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return []
        except OSError:
            data = b""
        if not data:
            self._drop(node)
            return None
        *lines, rest = (self._buffers[node] + data).split(b"\n")
        if len(rest) > self.max_line:
            self.warn(f"node {node} sent a line over {self.max_line} bytes; dropped")
            rest = b""
        self._buffers[node] = rest
        return lines

    def _went_away(self, node: int) -> RemoteStop | None:
        """A connection's end without `done` is a stop (the first one learned is kept)."""
        if node in self._done or self.stopped is not None:
            return None
        self.stopped = RemoteStop(node, f"the launcher of node {node} went away "
                                        "(connection closed)")
        return self.stopped

    def close(self) -> None:
        for node in list(self._links):
            self._drop(node)

    def _drop(self, node: int) -> None:
        link = self._links.pop(node, None)
        self._buffers.pop(node, None)
        if link is not None:
            link.sock.close()


class ControlChannel(LinkMesh):
    """This node's end of the control channel. `warn` gets one line per dropped message."""

    def __init__(self, node_rank: int, nnodes: int, links: dict[int, Link],
                 warn: Callable[[str], None] = lambda _: None):
        super().__init__(node_rank, nnodes, links, warn, "control messages", MAX_BUFFER)

    def send_stop(self, why: str) -> None:
        """Tell every other node (through node 0) to stop its workers, and why."""
        self._broadcast({"op": "stop", "node": self.node_rank, "why": why[:2000]})

    def send_done(self) -> None:
        """This node's workers all exited 0; closing after this is not a failure."""
        self._broadcast({"op": "done", "node": self.node_rank})

    def read(self, node: int) -> RemoteStop | None:
        """Handle what arrived from `node`; a RemoteStop the first time a stop is learned."""
        lines = self._receive_lines(node)
        if lines is None:
            return self._went_away(node)
        link, found = self._links.get(node), None
        for line in lines:
            message = self._check(node, link, line)
            if message is None:
                continue
            if message["op"] == "done":
                self._done.add(node)
            elif self.stopped is None:
                found = self._stop(RemoteStop(message["node"], one_line(message["why"], 500)))
                if self.node_rank == 0:
                    self._relay(message, but=node)
        return found

    def _check(self, node: int, link: Link, line: bytes) -> dict | None:
        """The message on `line` if it parses, verifies and is next in sequence."""
        from . import wire

        fields, why = wire.receive(wire.ControlMessage, link, line, node, self.node_rank,
                                   self.nnodes)
        if fields is None:
            self.warn(f"dropped a control message from node {node}: {why}")
        return fields

    def _stop(self, stop: RemoteStop) -> RemoteStop:
        self.stopped = stop
        return stop

    def _broadcast(self, message: dict) -> None:
        self._relay(message, but=None)

    def _relay(self, message: dict, but: int | None) -> None:
        """Send `message` (its op, node and why) on every link but `but`, MAC'd per link."""
        from . import wire

        fields = {"op": message["op"], "node": message["node"],
                  "why": message.get("why", "") if message["op"] == "stop" else ""}
        for node, link in list(self._links.items()):
            if node != but:
                wire.send(link, fields, SEND_TIMEOUT)

