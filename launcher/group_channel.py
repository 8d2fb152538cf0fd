"""The service launchers' channel between nodes: the rendezvous links, kept open.

Node 0 is the hub (as in control.py, which plain launches use); what one node sends, node
0 checks and relays to the others. Each node other than 0 first asks for every node's
address (`nodes?`) and node 0 answers (`nodes`) once all have asked. A group that spans
nodes fails, becomes ready and restarts on every node together: the node that sees one of
its workers fail sends `failed` (group, attempt, rank, cause); every node holding that
group tears its share down and restarts the same attempt number after the same backoff, so
nodes agree without a leader. Each node sends `ready` for its own ranks, so every node's
group policy sees the whole group. `stop` ends every node's launch; a connection that
closes without `done` counts as a stop.

Every message is one JSON line (GroupMessage, parsed strictly), MAC'd with the link's key
over its direction and a per-direction sequence number, as control.py's are (wire.py): a
line that does not parse, verify, come in sequence or speak for the right node is dropped
with a warning.
"""

from __future__ import annotations

import json
import select
import time
from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import Field, StringConstraints

from ..core.errors import one_line
from . import wire
from .control import Link, LinkMesh, RemoteStop
from .errors import LaunchError

MAX_BUFFER = 1 << 20  # of a partial line from one peer (payloads of a whole group)
SEND_TIMEOUT = 2.0
Count = Annotated[int, Field(ge=0, le=1 << 30)]
Text = Annotated[str, StringConstraints(max_length=wire.MAX_TEXT)]


class GroupMessage(wire._Message):
    """One message between service launchers (see the module docstring for the ops)."""

    op: Literal["ready", "failed", "stop", "done", "nodes?", "nodes"]
    node: Count
    seq: Count
    mac: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
    group: Count | None = None
    attempt: Count | None = None
    rank: Count | None = None
    cause: Literal["exit", "signal", "hung", "exited-0"] | None = None
    exit_code: int | None = None
    signal: int | None = None
    log_tail: list[Text] | None = None
    payload: dict[str, Any] | None = None
    why: Text | None = None
    addrs: dict[str, Annotated[str, StringConstraints(max_length=255)]] | None = None


class GroupChannel(LinkMesh):
    """This node's end: `links` maps a node rank to its authenticated Link (node 0: every
    other node; other nodes: node 0 only). `warn` gets one line per dropped message."""

    def __init__(self, node_rank: int, nnodes: int, links: dict[int, Link],
                 warn: Callable[[str], None] = lambda _: None):
        super().__init__(node_rank, nnodes, links, warn, "group messages", MAX_BUFFER)
        self._addrs: dict[int, str] | None = None
        self._early: list[dict[str, Any]] = []
        self._asked: set[int] = set()

    def send_ready(self, group: int, attempt: int, rank: int, payload: dict) -> None:
        # JSON carries the payload across nodes: bytes and other non-JSON values as text
        plain = json.loads(json.dumps(payload, default=str))
        self._send({"op": "ready", "group": group, "attempt": attempt, "rank": rank,
                    "payload": plain})

    def send_failed(self, group: int, attempt: int, rank: int, cause: str,
                    exit_code: int | None, signal: int | None, log_tail: tuple[str, ...]) -> None:
        self._send({"op": "failed", "group": group, "attempt": attempt, "rank": rank,
                    "cause": cause, "exit_code": exit_code, "signal": signal,
                    "log_tail": [line[:wire.MAX_TEXT] for line in log_tail]})

    def send_stop(self, why: str) -> None:
        self._send({"op": "stop", "why": why[:wire.MAX_TEXT]})

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
            if self.node_rank == 0 and self._asked >= set(self._links):
                addrs = {0: master_addr}
                for node, link in self._links.items():
                    try:
                        addrs[node] = link.sock.getpeername()[0]
                    except OSError:
                        addrs[node] = master_addr
                self._send({"op": "nodes", "addrs": {str(k): v for k, v in addrs.items()}})
                return addrs
            if self._addrs is not None:
                return self._addrs
            if self.stopped is not None or not self._links:
                break
            socks = {link.sock: node for node, link in self._links.items()}
            ready, _, _ = select.select(list(socks), [], [], 0.2)
            for sock in ready:
                self._early += self.read(socks[sock])
        raise LaunchError(f"the node addresses were not exchanged within {timeout:g}s "
                          f"({self.stopped.why if self.stopped else 'no answer'})", code=1)

    def take_early(self) -> list[dict[str, Any]]:
        """Group messages that arrived while waiting for the addresses."""
        early, self._early = self._early, []
        return early

    def read(self, node: int) -> list[dict[str, Any]]:
        """The group messages that arrived from `node` (relayed on when this is node 0).
        A stop, or the connection's end without `done`, sets `stopped`."""
        lines = self._receive_lines(node)
        if lines is None:
            self._went_away(node)
            return []
        link = self._links.get(node)
        found = []
        for line in lines:
            message = self._check(node, link, line)
            if message is None:
                continue
            if self.node_rank == 0:
                self._relay(message, but=node)
            op = message["op"]
            if op == "done":
                self._done.add(node)
            elif op == "stop":
                if self.stopped is None:
                    self.stopped = RemoteStop(message["node"],
                                              one_line(message.get("why") or "", 500))
            elif op == "nodes?":
                self._asked.add(node)
            elif op == "nodes" and message.get("addrs") is not None:
                self._addrs = {int(k): v for k, v in message["addrs"].items() if k.isdigit()}
            elif op in ("ready", "failed"):
                found.append(message)
        return found

    def _check(self, node: int, link: Link, line: bytes) -> dict[str, Any] | None:
        """The message on `line` if it parses, verifies, is next in sequence and speaks
        for a node it may speak for."""
        fields, why = wire.receive(GroupMessage, link, line, node, self.node_rank,
                                   self.nnodes, max_line=MAX_BUFFER)
        if fields is None:
            self.warn(f"dropped a message from node {node}: {why}")
        return fields

    def _send(self, message: dict) -> None:
        self._relay({**message, "node": self.node_rank}, but=None)

    def _relay(self, message: dict, but: int | None) -> None:
        """Send `message` on every link but `but`, with that link's sequence and MAC."""
        fields = {k: v for k, v in message.items() if k not in ("seq", "mac") and v is not None}
        for node, link in list(self._links.items()):
            if node != but:
                wire.send(link, fields, SEND_TIMEOUT)

