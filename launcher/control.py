"""The launchers' control channel: the rendezvous sockets, kept open for the whole launch.

Node 0 is the hub: every other node holds one connection to it. A node whose group fails,
or whose launcher gets a signal, sends `stop` (with a one-line reason naming the node and
rank); node 0 relays it to every other node, and each node stops its workers. A node whose
workers all exited 0 sends `done` before closing. End of stream without `done` (a launcher
killed, a host gone: TCP keepalive notices that within ~15 s) is a stop too.
Messages are JSON lines: {"op": "stop", "node": N, "why": TEXT} or {"op": "done", "node": N}.
"""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass

KEEPALIVE = {"TCP_KEEPIDLE": 5, "TCP_KEEPINTVL": 3, "TCP_KEEPCNT": 3}


@dataclass(frozen=True)
class RemoteStop:
    """Why another node asked every node to stop."""

    node: int
    why: str


def keep_alive(sock: socket.socket) -> None:
    """Make a silent peer (host down, cable out) end the connection in seconds, not hours."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in KEEPALIVE.items():
        option = getattr(socket, name, None)
        if option is not None:
            sock.setsockopt(socket.IPPROTO_TCP, option, value)


class ControlChannel:
    """This node's end of the control channel: `peers` maps a node rank to its socket."""

    def __init__(self, node_rank: int, peers: dict[int, socket.socket]):
        self.node_rank = node_rank
        self._peers = dict(peers)
        self._buffers: dict[int, bytes] = {node: b"" for node in peers}
        self._done: set[int] = set()
        self.stopped: RemoteStop | None = None
        for sock in self._peers.values():
            sock.setblocking(False)

    def sockets(self) -> dict[int, socket.socket]:
        """The open connections, by the node rank at the other end."""
        return dict(self._peers)

    def send_stop(self, why: str) -> None:
        """Tell every other node (through node 0) to stop its workers, and why."""
        self._broadcast({"op": "stop", "node": self.node_rank, "why": why})

    def send_done(self) -> None:
        """This node's workers all exited 0; closing after this is not a failure."""
        self._broadcast({"op": "done", "node": self.node_rank})

    def read(self, node: int) -> RemoteStop | None:
        """Handle what arrived from `node`; a RemoteStop the first time a stop is learned."""
        sock = self._peers.get(node)
        if sock is None:
            return None
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            return None
        except OSError:
            data = b""
        if not data:
            self._drop(node)
            if node in self._done or self.stopped is not None:
                return None
            return self._stop(RemoteStop(node, f"the launcher of node {node} went away "
                                               "(connection closed)"))
        self._buffers[node] += data
        *lines, self._buffers[node] = self._buffers[node].split(b"\n")
        found = None
        for line in lines:
            try:
                message = json.loads(line)
            except ValueError:
                continue
            origin = message.get("node", node) if isinstance(message, dict) else node
            if message.get("op") == "done":
                self._done.add(node)
            elif message.get("op") == "stop" and self.stopped is None:
                found = self._stop(RemoteStop(int(origin), str(message.get("why", ""))))
                if self.node_rank == 0:
                    self._relay(message, but=node)
        return found

    def close(self) -> None:
        for node in list(self._peers):
            self._drop(node)

    def _stop(self, stop: RemoteStop) -> RemoteStop:
        self.stopped = stop
        return stop

    def _broadcast(self, message: dict) -> None:
        self._relay(message, but=None)

    def _relay(self, message: dict, but: int | None) -> None:
        data = json.dumps(message).encode() + b"\n"
        for node, sock in list(self._peers.items()):
            if node == but:
                continue
            try:
                sock.setblocking(True)
                sock.settimeout(2.0)
                sock.sendall(data)
            except OSError:
                pass
            finally:
                try:
                    sock.setblocking(False)
                except OSError:
                    pass

    def _drop(self, node: int) -> None:
        sock = self._peers.pop(node, None)
        if sock is not None:
            sock.close()
