"""The service launchers' channel between nodes: the rendezvous sockets, kept open.

Node 0 is the hub (as in control.py, which plain launches use); what one node sends, node
0 relays to the others. Node 0 first sends every node's address (`nodes`). A group that
spans nodes fails, becomes ready and restarts on every node together: the node that sees
one of its workers fail sends `failed` (group, attempt, rank, cause); every node holding
that group tears its share down and restarts the same attempt number after the same
backoff, so nodes agree without a leader. Each node sends `ready` for its own ranks, so
every node's group policy sees the whole group. `stop` ends every node's launch; a
connection that closes without `done` counts as a stop.
JSON lines, each at most MAX_LINE bytes (a longer one closes the connection).
"""

from __future__ import annotations

import json
import select
import socket
import time
from collections.abc import Callable
from typing import Any

from .control import RemoteStop
from .errors import LaunchError

MAX_LINE = 1 << 20
SEND_TIMEOUT = 2.0


class GroupChannel:
    """This node's end: `peers` maps a node rank to its socket (node 0: every other node;
    other nodes: node 0 only)."""

    def __init__(self, node_rank: int, peers: dict[int, socket.socket]):
        self.node_rank = node_rank
        self._peers = dict(peers)
        self._buffers: dict[int, bytes] = {node: b"" for node in peers}
        self._done: set[int] = set()
        self.stopped: RemoteStop | None = None
        self._addrs: dict[int, str] | None = None
        self._early: list[dict[str, Any]] = []
        self._asked: set[int] = set()
        for sock in self._peers.values():
            sock.setblocking(False)

    def sockets(self) -> dict[int, socket.socket]:
        return dict(self._peers)

    def send_ready(self, group: int, attempt: int, rank: int, payload: dict) -> None:
        self._send({"op": "ready", "group": group, "attempt": attempt, "rank": rank,
                    "payload": payload})

    def send_failed(self, group: int, attempt: int, rank: int, cause: str,
                    exit_code: int | None, signal: int | None, log_tail: tuple[str, ...]) -> None:
        self._send({"op": "failed", "group": group, "attempt": attempt, "rank": rank,
                    "cause": cause, "exit_code": exit_code, "signal": signal,
                    "log_tail": list(log_tail)})

    def send_stop(self, why: str) -> None:
        self._send({"op": "stop", "why": why})

    def send_done(self) -> None:
        self._send({"op": "done"})

    def share_addresses(self, master_addr: str, timeout: float,
                        check: Callable[[], None] = lambda: None) -> dict[int, str]:
        """Every node's address, as node 0 sees it (node 0's own: `master_addr`), so a
        group whose first rank is on node k > 0 can name node k as its MASTER_ADDR.

        Each other node asks (`nodes?`) once the rendezvous is over, and node 0 answers
        (`nodes`) when all have asked: an answer sent unasked could reach a node inside
        the rendezvous reply and be lost. LaunchError after `timeout`.
        """
        deadline = time.monotonic() + timeout
        if self.node_rank != 0:
            self._send({"op": "nodes?"})
        while time.monotonic() < deadline:
            check()
            if self.node_rank == 0 and self._asked >= set(self._peers):
                addrs = {0: master_addr}
                for node, sock in self._peers.items():
                    try:
                        addrs[node] = sock.getpeername()[0]
                    except OSError:
                        addrs[node] = master_addr
                self._send({"op": "nodes", "addrs": {str(k): v for k, v in addrs.items()}})
                return addrs
            if self._addrs is not None:
                return self._addrs
            if self.stopped is not None or not self._peers:
                break
            ready, _, _ = select.select(list(self._peers.values()), [], [], 0.2)
            for node, sock in list(self._peers.items()):
                if sock in ready:
                    self._early += self.read(node)
        raise LaunchError(f"the node addresses were not exchanged within {timeout:g}s "
                          f"({self.stopped.why if self.stopped else 'no answer'})", code=1)

    def take_early(self) -> list[dict[str, Any]]:
        """Group messages that arrived while waiting for the addresses."""
        early, self._early = self._early, []
        return early

    def read(self, node: int) -> list[dict[str, Any]]:
        """The group messages that arrived from `node` (relayed on when this is node 0).
        A stop, or the connection's end without `done`, sets `stopped`."""
        sock = self._peers.get(node)
        if sock is None:
            return []
        try:
            data = sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return []
        except OSError:
            data = b""
        if not data:
            self._drop(node)
            if node not in self._done and self.stopped is None:
                self.stopped = RemoteStop(node, f"the launcher of node {node} went away "
                                                "(connection closed)")
            return []
        buf = self._buffers[node] + data
        *lines, rest = buf.split(b"\n")
        if len(rest) > MAX_LINE:
            self._drop(node)
            self.stopped = self.stopped or RemoteStop(node, f"node {node} sent an over-long "
                                                            "message")
            return []
        self._buffers[node] = rest
        found = []
        for line in lines:
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if not isinstance(message, dict):
                continue
            origin = message.get("node", node)
            if self.node_rank == 0:
                self._relay(message, but=node)
            op = message.get("op")
            if op == "done":
                self._done.add(node)
            elif op == "stop":
                if self.stopped is None:
                    self.stopped = RemoteStop(int(origin), str(message.get("why", "")))
            elif op in ("ready", "failed"):
                found.append(message)
            elif op == "nodes?":
                self._asked.add(node)
            elif op == "nodes" and isinstance(message.get("addrs"), dict):
                self._addrs = {int(k): str(v) for k, v in message["addrs"].items()}
        return found

    def close(self) -> None:
        for node in list(self._peers):
            self._drop(node)

    def _send(self, message: dict) -> None:
        message = {**message, "node": self.node_rank}
        self._relay(message, but=None)

    def _relay(self, message: dict, but: int | None) -> None:
        data = json.dumps(message).encode() + b"\n"
        for node, sock in list(self._peers.items()):
            if node == but:
                continue
            try:
                sock.setblocking(True)
                sock.settimeout(SEND_TIMEOUT)
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
        self._buffers.pop(node, None)
        if sock is not None:
            sock.close()
