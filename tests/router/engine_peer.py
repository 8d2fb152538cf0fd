"""An EngineServer-protocol peer for the router's unit tests: a real ZMQ ROUTER socket on
loopback speaking engine/protocol.py, with a trivial deterministic "model" (each output token
is the previous token plus one, modulo 256; text is that byte as a character).

It answers hello to every new connection, stats on request, reports the prompt's full blocks
as stored (kv_events), emits one token per request per step, and honours abort. `kill()`
closes its socket at once, as a dead process would.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import zmq

from pypto_serving.engine import protocol
from pypto_serving.engine.hashing import block_hashes


@dataclass
class _Req:
    rid: str
    identity: bytes
    prompt: list[int]
    max_tokens: int
    out: list[int] = field(default_factory=list)


class EnginePeer:
    """A fake replica leader on its own thread."""

    def __init__(self, replica: int = 0, *, block_size: int = 4, max_model_len: int = 128,
                 step_s: float = 0.0, model: str = "tiny", reject: dict | None = None) -> None:
        self.replica, self.block_size, self.max_model_len = replica, block_size, max_model_len
        self.step_s, self.model = step_s, model
        self.reject = reject  # {"code": 429, "message": ...}: refuse every add
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        port = self.sock.bind_to_random_port("tcp://127.0.0.1")
        self.endpoint = f"tcp://127.0.0.1:{port}"
        self.requests: dict[str, _Req] = {}
        self.received: list[dict] = []
        self.aborted: list[str] = []
        self.known: set[bytes] = set()
        self.stored: set[int] = set()
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._killed = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def adds(self) -> list[dict]:
        return [m for m in self.received if m["op"] == "add"]

    def wait(self, predicate, timeout: float = 10.0) -> None:
        """Until `predicate()` holds (re-checked after every message the peer handles)."""
        with self._changed:
            assert self._changed.wait_for(predicate, timeout), "the peer never got there"

    def kill(self) -> None:
        """Close the socket at once (the router sees the connection drop)."""
        self._killed.set()
        self._thread.join(timeout=5)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _send(self, identity: bytes, msg: dict) -> None:
        self.sock.send_multipart([identity, protocol.encode(msg)])

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        try:
            while not self._stop.is_set() and not self._killed.is_set():
                timeout = 1 if self.requests else 20
                if poller.poll(timeout):
                    while True:
                        try:
                            identity, frame = self.sock.recv_multipart(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        self._on_message(identity, protocol.decode(frame, protocol.ROUTER_OPS))
                    with self._changed:
                        self._changed.notify_all()
                if self.requests:
                    if self.step_s:
                        time.sleep(self.step_s)
                    self._step()
        finally:
            self.sock.close(linger=0)
            self.ctx.term()

    def _on_message(self, identity: bytes, msg: dict) -> None:
        self.received.append(msg)
        if identity not in self.known:
            self.known.add(identity)
            self._send(identity, {"op": "hello", "replica": self.replica,
                                  "block_size": self.block_size,
                                  "max_model_len": self.max_model_len, "model": self.model,
                                  "kv_blocks_total": 64})
        op = msg["op"]
        if op == "stats":
            self._send(identity, {"op": "stats", "waiting": 0, "running": len(self.requests),
                                  "pending_tokens": sum(r.max_tokens - len(r.out)
                                                        for r in self.requests.values()),
                                  "kv_usage": 0.0, "kv_blocks_total": 64, "kv_blocks_free": 64,
                                  "prefix_hits": 0, "prefix_queries": 0,
                                  "num_preemptions": 0})
        elif op == "add":
            if self.reject:
                self._send(identity, {"op": "error", "rid": msg["rid"], **self.reject})
                return
            prompt = list(msg["prompt_token_ids"])
            self.requests[msg["rid"]] = _Req(msg["rid"], identity, prompt,
                                             msg["sampling"]["max_tokens"])
            hashes = block_hashes(prompt, self.block_size)
            cached = 0
            for h in hashes:
                if h not in self.stored:
                    break
                cached += self.block_size
            self.requests[msg["rid"]].cached = cached  # type: ignore[attr-defined]
            new = [h for h in hashes if h not in self.stored]
            self.stored.update(new)
            if new:
                self._send(identity, {"op": "kv_events", "stored": new, "evicted": []})
        elif op == "abort":
            self.aborted.append(msg["rid"])
            self.requests.pop(msg["rid"], None)

    def _step(self) -> None:
        for rid, r in list(self.requests.items()):
            last = r.out[-1] if r.out else r.prompt[-1]
            tok = (last + 1) % 256
            r.out.append(tok)
            done = len(r.out) >= r.max_tokens
            self._send(r.identity, {
                "op": "output", "rid": rid, "token_ids": [tok], "text": chr(tok),
                "finished": done, "finish_reason": "length" if done else None,
                "prompt_tokens": len(r.prompt), "cached_tokens": r.cached,
                "completion_tokens": len(r.out)})
            if done:
                del self.requests[rid]


def expected_text(prompt: list[int], n: int) -> str:
    """What the peer answers for `prompt` with max_tokens n."""
    return "".join(chr((prompt[-1] + 1 + i) % 256) for i in range(n))
