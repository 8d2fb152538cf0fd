"""The replicas behind the router: which are ready, where a request goes, and retries.

`generate` is the one path every request takes: pick a replica with the policy, send, relay
its outputs, and when the replica dies under the request, send it again to a ready one (a
request that already streamed tokens to its client cannot be replayed: it ends with
ReplicaLost). With no replica ready (a whole world restarting under DP + EP) requests are held
until one is, up to `hold_timeout_s`.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import zmq

from ..engine.hashing import block_hashes
from ..engine.sampling_params import SamplingParams
from .errors import APIError
from .policies import Candidate, Pinned, Policy, RouteRequest
from .prefix_index import PrefixIndex
from .replica import REPLICA_DOWN, ReplicaClient, ReplicaDown

log = logging.getLogger("pypto.router")

RESTART = {"op": "restart"}
"""Yielded to a resumable consumer: its request starts again on another replica."""


class ReplicaLost(RuntimeError):
    """The replica died after the request had streamed tokens; it cannot be replayed."""


@dataclass
class Job:
    """One request as the pool routes it."""

    prompt_token_ids: list[int]
    sampling: SamplingParams
    session_id: str | None = None
    resumable: bool = True
    """True for non-streaming requests: a retry after partial output restarts them."""
    block_hashes: list[int] | None = field(default=None, repr=False)


class ReplicaPool:
    """The replicas (one ReplicaClient each) and the routing of requests over them."""

    def __init__(self, policy: Policy, *, block_size: int = 16, hold_timeout_s: float = 60.0,
                 max_attempts: int = 4, needs_hashes: bool | None = None) -> None:
        self.policy = policy
        self.block_size = block_size
        self.hold_timeout_s = hold_timeout_s
        self.max_attempts = max_attempts
        self.needs_hashes = policy.name == "prefix_aware" if needs_hashes is None \
            else needs_hashes
        self.replicas: dict[int, ReplicaClient] = {}
        self.index = PrefixIndex()
        self.closed = False
        self.in_flight = 0
        self._ctx = zmq.Context()
        self._ready_changed = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._ids = itertools.count()
        self.on_change: list = []
        """Callbacks (replica, ready: bool, reason) when a replica comes or goes."""

    # -- membership (driven by the launcher's events) -----------------------------------

    def add(self, replica: int, endpoint: str, group: int | None = None) -> ReplicaClient:
        """A replica reported ready at `endpoint` (a restart replaces the old client)."""
        old = self.replicas.pop(replica, None)
        if old is not None:
            old.close()
            self.index.forget(replica)
        client = ReplicaClient(replica, endpoint, self._ctx, on_ready=self._client_ready,
                               on_down=self._client_down, on_kv_events=self.index.apply_events,
                               group=group)
        self.replicas[replica] = client
        client.start()
        return client

    def mark_down(self, replica: int, reason: str) -> None:
        """The launcher saw the replica fail (or it is stopping): out of rotation now."""
        client = self.replicas.get(replica)
        if client is not None:
            client.mark_down(reason)

    def mark_group_down(self, group: int, reason: str) -> None:
        for client in list(self.replicas.values()):
            if client.group == group:
                client.mark_down(reason)

    def _client_ready(self, client: ReplicaClient) -> None:
        bs = client.state.hello.get("block_size")
        if isinstance(bs, int) and bs > 0:
            self.block_size = bs
        self._ready_changed.set()
        for cb in self.on_change:
            cb(client.replica, True, "ready")

    def _client_down(self, client: ReplicaClient, reason: str) -> None:
        self.index.forget(client.replica)
        for cb in self.on_change:
            cb(client.replica, False, reason)

    @property
    def ready_ids(self) -> list[int]:
        return sorted(r for r, c in self.replicas.items() if c.ready)

    def info(self) -> dict | None:
        """A ready replica's hello (model name, context length), if any."""
        for r in self.ready_ids:
            return self.replicas[r].state.hello
        return None

    async def wait_ready(self, timeout: float) -> bool:
        """Until at least one replica is ready (True) or `timeout` passes (False)."""
        deadline = time.monotonic() + timeout
        while not self.ready_ids:
            left = deadline - time.monotonic()
            if left <= 0 or self.closed:
                return False
            self._ready_changed.clear()
            try:
                await asyncio.wait_for(self._ready_changed.wait(), left)
            except asyncio.TimeoutError:
                return bool(self.ready_ids)
        return True

    async def close(self) -> None:
        self.closed = True
        self._ready_changed.set()
        for client in self.replicas.values():
            client.close()
        self.replicas.clear()
        self._ctx.term()

    async def drained(self, timeout: float) -> bool:
        """Until no request is in flight (True) or `timeout` passes (False)."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    # -- routing -------------------------------------------------------------------------

    def hashes(self, job: Job) -> list[int]:
        if job.block_hashes is None:
            job.block_hashes = block_hashes(job.prompt_token_ids, self.block_size) \
                if self.needs_hashes else []
        return job.block_hashes

    def candidates(self, hashes: list[int], exclude: set[int] = frozenset(),
                   only: int | None = None) -> list[Candidate]:
        out = []
        for r in self.ready_ids:
            if r in exclude or (only is not None and r != only):
                continue
            c = self.replicas[r]
            out.append(Candidate(r, c.pending_tokens(), c.pending_requests(),
                                 self.index.cached_blocks(r, hashes) if hashes else 0))
        return out

    async def _pick(self, job: Job, exclude: set[int], only: int | None
                    ) -> tuple[ReplicaClient, int]:
        hashes = self.hashes(job)
        deadline = time.monotonic() + self.hold_timeout_s
        while True:
            cands = self.candidates(hashes, exclude, only)
            if cands:
                break
            if self.closed:
                raise APIError(503, "the server is shutting down")
            usable = [r for r in self.ready_ids if only is None or r == only]
            if usable and all(r in exclude for r in usable):
                raise APIError(429, "every replica's queue is full; retry later",
                               code="queue_full")
            if not await self.wait_ready(deadline - time.monotonic()):
                raise APIError(503, f"no replica became ready within {self.hold_timeout_s:g} "
                               "s; retry later", code="no_replica")
        policy = self.policy if only is None else Pinned(only)
        chosen = policy.choose(cands, RouteRequest(len(job.prompt_token_ids),
                                                        job.session_id, tuple(hashes)))
        cached = next(c.cached_blocks for c in cands if c.replica == chosen)
        if hashes:
            self.index.expect(chosen, hashes)
        return self.replicas[chosen], cached * self.block_size

    async def generate(self, job: Job, only: int | None = None) -> AsyncIterator[dict]:
        """The request's output messages (with "replica" added), retried on another replica
        if its replica dies; raises APIError for a refusal, ReplicaLost as described above.
        `only`: that replica alone (external load balancing), waited for if it is down."""
        self.in_flight += 1
        self._idle.clear()
        base = f"r{next(self._ids)}"
        full: set[int] = set()  # replicas that answered 429 (queue full)
        try:
            for attempt in range(self.max_attempts):
                client, cached = await self._pick(job, full, only)
                rid = f"{base}.{attempt}"
                try:
                    queue = client.submit(rid, job.prompt_token_ids, job.sampling, cached)
                except ReplicaDown:
                    continue
                sent = False
                finished = False
                try:
                    while True:
                        msg = await queue.get()
                        if msg is REPLICA_DOWN:
                            break
                        if msg["op"] == "error":
                            code = int(msg.get("code", 500))
                            if code == 429:
                                full.add(client.replica)
                                break
                            raise APIError(code if code in (400, 413) else 500,
                                           str(msg.get("message", "engine error")))
                        msg["replica"] = client.replica
                        finished = bool(msg.get("finished"))
                        if msg.get("token_ids") or msg.get("text"):
                            sent = True
                        yield msg
                        if finished:
                            return
                finally:
                    if not finished:
                        client.abort(rid)  # no-op when the replica already forgot it
                if msg is REPLICA_DOWN and sent:
                    if not job.resumable:
                        raise ReplicaLost(f"replica {client.replica} failed mid-stream")
                    yield RESTART
            raise APIError(429 if full else 503, "no replica could take the request after "
                           f"{self.max_attempts} attempts; retry later")
        finally:
            self.in_flight -= 1
            if self.in_flight == 0:
                self._idle.set()

