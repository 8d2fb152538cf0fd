"""The engine's outside API: a ZMQ ROUTER socket on the replica leader, speaking
engine/protocol.py, and the loop that drives the engine.

One loop on one thread owns the socket and the engine: take in every waiting message (add,
abort, stats), run one step if the executor says so (under DP + EP `must_step` is a vote
across replicas, so an idle replica runs dummy steps while another is busy), send each
output to the router that sent its request, publish KV events and stats. Idle, it waits on
the socket with a short timeout. A bad frame is dropped with a warning (or answered with an
"error" when it names a request); nothing a router sends can stop the loop.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from typing import Any

import zmq

from . import protocol
from .engine import Engine
from .errors import RequestRejected
from .output import RequestOutput
from .sampling_params import SamplingParams

log = logging.getLogger(__name__)

MAX_MESSAGES_PER_TURN = 1024
"""Messages taken in between two steps at most, so a flood cannot starve the running ones."""


class EngineServer:
    """Serves one engine on `bind` (port 0 picks a free one; `endpoint` is the address)."""

    def __init__(self, engine: Engine, bind: str = "tcp://127.0.0.1:0", replica: int = 0,
                 model_name: str = "model", *, max_queue: int | None = None,
                 idle_poll_s: float = 0.005, stats_interval_s: float = 0.05,
                 linger_s: float = 1.0):
        """`max_queue`: waiting requests past which an add is answered 429 (serve.max_queue;
        None: the router's limit is the only one)."""
        self.engine = engine
        self.max_queue = max_queue
        self.replica = replica
        self.model_name = model_name
        self.idle_poll_ms = max(1, int(idle_poll_s * 1000))
        self.stats_interval_s = stats_interval_s
        self.linger_ms = int(linger_s * 1000)
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.ROUTER)
        # A send to a router that is gone fails (EHOSTUNREACH) instead of vanishing: that is
        # how the server learns a router left (libzmq's ROUTER_NOTIFY is a draft API).
        self._sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self._sock.setsockopt(zmq.MAXMSGSIZE, protocol.MAX_FRAME_BYTES)
        self._sock.bind(bind)
        self.endpoint: str = self._sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self._peers: set[bytes] = set()
        self._owner: dict[str, bytes] = {}
        """rid -> identity of the router that sent it (outputs go back there)."""
        self._stats_dirty = True
        self._last_stats = 0.0
        self.dropped_frames = 0
        self.closed = False

    # --- the loop ---------------------------------------------------------------------------

    def run(self, stop_event: threading.Event | None = None) -> None:
        """Serve until `stop_event` is set (or SIGTERM/SIGINT when run on the main thread);
        then abort what is in flight (its routers are told) and close the socket. The
        executor is the caller's to close."""
        stop = stop_event if stop_event is not None else threading.Event()
        restore = _on_signals(stop) if threading.current_thread() is threading.main_thread() \
            else {}
        engine, executor = self.engine, self.engine.executor
        stepping = False
        try:
            while not stop.is_set():
                # Wait on the socket only when nobody steps: while any replica is busy (DP +
                # EP) a wait here would hold up every replica's step.
                self._receive(0 if stepping or engine.has_work else self.idle_poll_ms)
                stepping = executor.must_step(engine.has_work)
                if stepping:
                    self._step()
                self._publish_stats()
        finally:
            for sig, handler in restore.items():
                signal.signal(sig, handler)
            self._shutdown()

    def _step(self) -> None:
        try:
            outputs = self.engine.step()
        except Exception:
            log.exception("engine step failed; every request in flight ends with an error")
            self._send_outputs(self.engine.fail_all())
            raise
        self._send_outputs(outputs)
        self._publish_kv_events()
        if outputs:
            self._stats_dirty = True

    def _shutdown(self) -> None:
        if self.closed:
            return
        outputs = [out for rid in list(self._owner) if (out := self.engine.abort(rid))]
        self._send_outputs(outputs)
        self._publish_stats(force=True)
        self._sock.close(linger=self.linger_ms)
        self._ctx.term()
        self.closed = True

    def close(self) -> None:
        """Close the socket without running (for a server whose run() never started)."""
        self._shutdown()

    # --- receiving --------------------------------------------------------------------------

    def _receive(self, timeout_ms: int) -> None:
        if not self._sock.poll(timeout_ms, zmq.POLLIN):
            return
        for _ in range(MAX_MESSAGES_PER_TURN):
            try:
                frames = self._sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                self._handle(frames)
            except Exception as e:  # a message must never take the loop down
                log.exception("failed to handle a message")
                self._drop(f"{type(e).__name__}: {e}")

    def _drop(self, why: str) -> None:
        self.dropped_frames += 1
        log.warning("dropped a frame from a router: %s", why[:200])

    def _handle(self, frames: list[bytes]) -> None:
        identity = frames[0]
        if identity not in self._peers:
            # A DEALER is invisible to a ROUTER until it speaks: greet it on its first frame.
            self._connected(identity)
        if len(frames) != 2:
            self._drop(f"{len(frames) - 1} frames in one message (a message is one frame)")
            return
        try:
            message = protocol.decode(frames[1], protocol.ROUTER_OPS)
        except protocol.ProtocolError as e:
            self._drop(str(e))
            return
        op = message["op"]
        if op == "add":
            self._add(identity, message)
        elif op == "abort":
            rid = message.get("rid")
            if not isinstance(rid, str):
                self._drop(f"abort without a string rid: {rid!r}")
                return
            out = self.engine.abort(rid)
            if out is not None:
                self._send_outputs([out])
                self._stats_dirty = True
        else:  # stats
            self._send(identity, {"op": "stats", **self.engine.stats()})

    def _add(self, identity: bytes, message: dict[str, Any]) -> None:
        rid = message.get("rid")
        if not isinstance(rid, str) or not rid:
            self._drop(f"add without a non-empty string rid: {rid!r}")
            return
        waiting = self.engine.scheduler.waiting
        if self.max_queue is not None and len(waiting) >= self.max_queue:
            self._send(identity, {"op": "error", "rid": rid, "code": 429, "message": (
                f"replica {self.replica} has {len(waiting)} requests waiting, its limit "
                f"(serve.max_queue={self.max_queue}); retry later or on another replica")})
            return
        try:
            sampling = parse_sampling(message.get("sampling", {}))
            self.engine.add_request(rid, message.get("prompt_token_ids"), sampling)
        except RequestRejected as e:
            self._send(identity, {"op": "error", "rid": rid, "code": e.code, "message": str(e)})
            return
        self._owner[rid] = identity
        self._stats_dirty = True

    def _connected(self, identity: bytes) -> None:
        self._publish_kv_events()  # the others first: the newcomer's snapshot is after it
        self._peers.add(identity)
        eng = self.engine
        self._send(identity, {"op": "hello", "replica": self.replica,
                              "block_size": eng.block_size, "max_model_len": eng.max_model_len,
                              "model": self.model_name,
                              "kv_blocks_total": eng.block_manager.num_blocks})
        self._send(identity, {"op": "kv_events", "stored": eng.cached_hashes(), "evicted": []})

    def _disconnected(self, identity: bytes) -> None:
        """A router went away: nobody can receive its requests' tokens any more."""
        self._peers.discard(identity)
        log.warning("router %s is gone", identity.hex())
        gone = [rid for rid, owner in self._owner.items() if owner == identity]
        for rid in gone:
            del self._owner[rid]
            self.engine.abort(rid)
        if gone:
            log.warning("router disconnected; aborted its %d request(s)", len(gone))
            self._stats_dirty = True

    # --- sending ----------------------------------------------------------------------------

    def _send(self, identity: bytes, message: dict[str, Any]) -> None:
        if identity not in self._peers:
            return
        try:
            self._sock.send_multipart([identity, protocol.encode(message)], zmq.NOBLOCK)
        except zmq.Again:
            log.warning("router %s is not reading; dropped a %s message", identity.hex(),
                        message["op"])
        except zmq.ZMQError as e:
            if e.errno != zmq.EHOSTUNREACH:
                raise
            self._disconnected(identity)

    def _send_outputs(self, outputs: list[RequestOutput]) -> None:
        for out in outputs:
            identity = self._owner.get(out.rid)
            if out.finished:
                self._owner.pop(out.rid, None)
            if identity is not None:
                self._send(identity, out.to_message())

    def _broadcast(self, message: dict[str, Any]) -> None:
        for identity in list(self._peers):
            self._send(identity, message)

    def _publish_kv_events(self) -> None:
        stored, evicted = self.engine.drain_kv_events()
        if stored or evicted:
            self._broadcast({"op": "kv_events", "stored": stored, "evicted": evicted})

    def _publish_stats(self, force: bool = False) -> None:
        now = time.monotonic()
        due = self._stats_dirty and (now - self._last_stats >= self.stats_interval_s
                                     or not self.engine.has_work)
        if (due or force) and self._peers:
            self._broadcast({"op": "stats", **self.engine.stats()})
            self._last_stats = now
            self._stats_dirty = False


def parse_sampling(d: Any) -> SamplingParams:
    """SamplingParams from a message's map; RequestRejected naming the bad field."""
    if not isinstance(d, dict):
        raise RequestRejected("", f"sampling must be a map, got {type(d).__name__}")
    for key in ("stop", "stop_token_ids"):
        if key in d and not isinstance(d[key], list):
            raise RequestRejected("", f"sampling.{key} must be a list, got {d[key]!r}")
    try:
        return SamplingParams.from_dict(d)
    except TypeError as e:
        raise RequestRejected("", f"sampling: {e}") from None


def _on_signals(stop: threading.Event) -> dict:
    """Let SIGTERM/SIGINT set `stop`; returns the handlers to restore."""
    previous = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        previous[sig] = signal.signal(sig, lambda *_: stop.set())
    return previous
