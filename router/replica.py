"""One replica as the router sees it: a ZMQ DEALER to its leader's EngineServer.

Speaks engine/protocol.py (msgpack maps, never pickle). The client learns the replica's shape
from its "hello", polls its stats, feeds its kv_events to the prefix index, and hands each
request's outputs to that request's queue. It keeps its own account of what it sent (pending
tokens and requests) so load is known between two stats replies.

A replica is out at the first failed call: a send that finds no connected peer (the socket
is IMMEDIATE, so nothing is queued for a dead peer) or the TCP connection dropping (the
socket monitor's DISCONNECTED, at once when the process dies). Every request in flight on it
then gets REPLICA_DOWN on its queue, and the pool retries or ends it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import zmq
from zmq.utils.monitor import parse_monitor_message

from ..engine import protocol
from ..engine.sampling_params import SamplingParams

log = logging.getLogger("pypto.router")

REPLICA_DOWN = {"op": "replica_down"}
"""Put on a request's queue when its replica goes away before the request finished."""

ENDED_BY_REPLICA = frozenset({"abort", "error"})
"""Finish reasons a replica gives a request it ends on its own (shutdown, a failed step)."""

STATS_INTERVAL_S = 0.25

# Plain ints: pyzmq's enum flags cost a microsecond or two per operation on the hot path.
_EVENTS, _POLLIN, _NOBLOCK = int(zmq.EVENTS), int(zmq.POLLIN), int(zmq.NOBLOCK)


class ReplicaDown(RuntimeError):
    """The replica cannot take the request (it is gone or going)."""


@dataclass
class InFlight:
    """A request sent to this replica, with what is still to come of it."""

    rid: str
    queue: asyncio.Queue
    prompt_left: int
    """Prompt tokens not yet prefilled (all of them until the first output)."""
    decode_left: int
    """Tokens still to decode (max_tokens minus those already produced)."""
    done: bool = False

    @property
    def pending_tokens(self) -> int:
        return self.prompt_left + self.decode_left


@dataclass
class ReplicaState:
    """What the replica last said about itself."""

    hello: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)
    own_tokens_at_stats: int = 0
    own_requests_at_stats: int = 0


class ReplicaClient:
    """The router's connection to one replica leader."""

    def __init__(self, replica: int, endpoint: str, ctx: zmq.Context, *,
                 on_ready: Callable[[ReplicaClient], None],
                 on_down: Callable[[ReplicaClient, str], None],
                 on_kv_events: Callable[[int, list[int], list[int]], None],
                 group: int | None = None) -> None:
        self.replica = replica
        self.endpoint = endpoint
        self.group = group
        self.state = ReplicaState()
        self.ready = False
        self.down = False
        self.inflight: dict[str, InFlight] = {}
        self._own_tokens = 0
        self._on_ready, self._on_down, self._on_kv_events = on_ready, on_down, on_kv_events
        self._sock = ctx.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.IMMEDIATE, 1)
        self._sock.setsockopt(zmq.SNDHWM, 0)
        self._sock.setsockopt(zmq.RCVHWM, 0)
        self._sock.setsockopt(zmq.MAXMSGSIZE, protocol.MAX_FRAME_BYTES)
        self._monitor = self._sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED
                                                      | zmq.EVENT_DISCONNECTED)
        self._sock.connect(endpoint)
        self._tasks: list[asyncio.Task] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._talking = False
        self._drain_due = False

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._sock.FD, self._drain)
        self._loop.add_reader(self._monitor.FD, self._drain_monitor)
        self._loop.call_soon(self._drain)
        self._loop.call_soon(self._drain_monitor)

    def close(self) -> None:
        """Stop talking to the replica (it stopped, or was replaced by a restarted one)."""
        self._fail_all("closed")
        for t in self._tasks:
            t.cancel()
        if self._loop is not None and not self._sock.closed:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self._sock.FD)
                self._loop.remove_reader(self._monitor.FD)
        if self._sock.closed:
            return
        with contextlib.suppress(zmq.ZMQError):
            self._sock.disable_monitor()
        self._monitor.close(linger=0)
        self._sock.close(linger=0)

    def mark_down(self, reason: str) -> None:
        """Out of rotation now; every request in flight here is handed back to the pool."""
        if self.down:
            return
        self.down, self.ready = True, False
        log.info("replica %d (%s) is out: %s", self.replica, self.endpoint, reason)
        self._fail_all(reason)
        self._on_down(self, reason)

    def _fail_all(self, reason: str) -> None:
        for req in list(self.inflight.values()):
            self._finish(req)
            req.queue.put_nowait(REPLICA_DOWN)

    # -- requests ------------------------------------------------------------------------

    def submit(self, rid: str, prompt_token_ids: list[int], sampling: SamplingParams,
               cached_tokens: int = 0) -> asyncio.Queue:
        """Send one request; its outputs (and errors) arrive on the returned queue."""
        if not self.ready:
            raise ReplicaDown(f"replica {self.replica} is not ready")
        self._send({"op": "add", "rid": rid, "prompt_token_ids": prompt_token_ids,
                    "sampling": sampling.to_dict()})
        req = InFlight(rid, asyncio.Queue(), max(0, len(prompt_token_ids) - cached_tokens),
                       sampling.max_tokens)
        self.inflight[rid] = req
        self._own_tokens += req.pending_tokens
        return req.queue

    def abort(self, rid: str) -> None:
        """Stop a request (its client went away); its KV blocks are freed on the replica."""
        req = self.inflight.get(rid)
        if req is None:
            return
        self._finish(req)
        if not self.down:
            with contextlib.suppress(ReplicaDown):
                self._send({"op": "abort", "rid": rid})

    def _finish(self, req: InFlight) -> None:
        if req.done:
            return
        req.done = True
        self._own_tokens -= req.pending_tokens
        self.inflight.pop(req.rid, None)

    def _send(self, message: dict[str, Any]) -> None:
        try:
            self._sock.send(protocol.encode(message), _NOBLOCK)  # copied: small
        except zmq.ZMQError as e:  # Again: no peer connected (it died); others: closed
            self.mark_down(f"send failed ({e})")
            raise ReplicaDown(f"replica {self.replica} is gone") from None
        # ZMQ's FD is edge-triggered and a send may consume the edge of a pending input: look
        # once after this loop turn's sends (not once per send: a burst of 32 is one look)
        if self._loop is not None and not self._drain_due:
            self._drain_due = True
            self._loop.call_soon(self._drain)

    # -- load ----------------------------------------------------------------------------

    def pending_tokens(self) -> int:
        """The replica's pending tokens: the router's own account of what it sent, plus what
        the last stats showed beyond that account (work from elsewhere)."""
        s = self.state
        other = int(s.stats.get("pending_tokens", 0)) - s.own_tokens_at_stats
        return self._own_tokens + max(0, other)

    def pending_requests(self) -> int:
        s = self.state
        seen = int(s.stats.get("waiting", 0)) + int(s.stats.get("running", 0))
        return len(self.inflight) + max(0, seen - s.own_requests_at_stats)

    # -- receiving -----------------------------------------------------------------------

    def _drain(self) -> None:
        """Every frame waiting on the socket (its FD only signals an edge)."""
        self._drain_due = False
        sock = self._sock
        while not sock.closed and int(sock.getsockopt(_EVENTS)) & _POLLIN:
            try:
                frames = sock.recv_multipart(_NOBLOCK)
            except zmq.Again:
                break
            try:
                msg = protocol.decode(frames[-1], protocol.ENGINE_OPS)
            except protocol.ProtocolError as e:
                log.warning("replica %d: dropped a frame: %s", self.replica, e)
                continue
            self._handle(msg)

    def _handle(self, msg: dict[str, Any]) -> None:
        op = msg["op"]
        if op == "output" or op == "error":
            req = self.inflight.get(msg.get("rid", ""))
            if req is None:
                return  # aborted or finished here already
            if op == "output" and msg.get("finished") \
                    and msg.get("finish_reason") in ENDED_BY_REPLICA:
                # ended by the replica itself, not by its request (only the router aborts,
                # and it forgets the request first): it is shutting down, its world
                # restarting, or its step failed. As if it were gone: every request in
                # flight here goes back to the pool, to be retried elsewhere
                self.mark_down(f"it ended request {req.rid} itself "
                               f"({msg['finish_reason']})")
                return
            if op == "error" or msg.get("finished"):
                self._finish(req)
            else:
                before = req.pending_tokens
                req.prompt_left = 0
                req.decode_left = max(0, req.decode_left - len(msg.get("token_ids", ())))
                self._own_tokens += req.pending_tokens - before
            req.queue.put_nowait(msg)
        elif op == "kv_events":
            self._on_kv_events(self.replica, list(msg.get("stored", ())),
                               list(msg.get("evicted", ())))
        elif op == "stats":
            self.state.stats = msg
            self.state.own_tokens_at_stats = self._own_tokens
            self.state.own_requests_at_stats = len(self.inflight)
        elif op == "hello":
            self.state.hello = msg
            if not self.ready and not self.down:
                self.ready = True
                log.info("replica %d ready at %s", self.replica, self.endpoint)
                self._on_ready(self)

    async def _poll_stats(self) -> None:
        """Ask for stats now (the first frame also makes the server say hello), then every
        STATS_INTERVAL_S (the server also sends them when they change)."""
        while not self.down:
            with contextlib.suppress(ReplicaDown):
                self._send({"op": "stats"})
            await asyncio.sleep(STATS_INTERVAL_S)

    def _drain_monitor(self) -> None:
        """The connection coming up starts the talk; it dropping takes the replica out."""
        mon = self._monitor
        while not mon.closed and mon.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            try:
                event = parse_monitor_message(mon.recv_multipart(zmq.NOBLOCK))
            except zmq.Again:
                break
            if event["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED and not self._talking:
                self._talking = True
                self._tasks.append(asyncio.ensure_future(self._poll_stats()))
            elif event["event"] == zmq.EVENT_DISCONNECTED:
                self.mark_down("connection lost")
                return
