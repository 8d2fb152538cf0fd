"""A running router (real uvicorn on a free loopback port, real ZMQ) in front of in-test
EngineServer-protocol peers (engine_peer.py)."""

from __future__ import annotations

import asyncio
import threading
import time

from engine_peer import EnginePeer

from pypto_serving.engine.tokenizer import ByteTokenizer
from pypto_serving.router.app import AppSettings
from pypto_serving.router.policies import make_policy
from pypto_serving.router.server import Router

MODEL = "tiny"


class RunningRouter:
    """Router.serve() on its own thread and loop; replicas added as their peers start."""

    def __init__(self, policy: str = "least_loaded", *, api_key: str | None = None,
                 max_model_len: int = 128, max_request_bytes: int = 4096,
                 max_concurrent_requests: int = 64, hold_timeout_s: float = 5.0,
                 external: int | None = None, **policy_args) -> None:
        settings = AppSettings(MODEL, max_model_len, api_key, max_request_bytes,
                               max_concurrent_requests)
        self.router = Router(make_policy(policy, **policy_args), ByteTokenizer(), settings,
                             external=external, hold_timeout_s=hold_timeout_s,
                             drain_timeout_s=5.0)
        self.url = self.router.url
        self._changed = threading.Condition()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self.router.started.wait(10)
        self.router.pool.on_change.append(self._on_change)

    def _run(self) -> None:
        try:
            asyncio.run(self.router.serve())
        except BaseException as e:  # surfaced by close()
            self.error = e

    def _on_change(self, replica: int, ready: bool, reason: str) -> None:
        with self._changed:
            self._changed.notify_all()

    def ready_ids(self) -> list[int]:
        return self.router.pool.ready_ids

    def wait(self, predicate, timeout: float = 10.0) -> None:
        """Until `predicate()` holds: re-checked when a replica comes or goes, and every
        10 ms for the router's other state (no event for it)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not predicate():
                left = deadline - time.monotonic()
                assert left > 0, "router state never came"
                self._changed.wait(min(left, 0.01))

    def add(self, peer: EnginePeer, group: int | None = None) -> None:
        self.router.loop.call_soon_threadsafe(self.router.add_replica, peer.replica,
                                              peer.endpoint, group)
        self.wait(lambda: peer.replica in self.ready_ids())

    def close(self) -> None:
        self.router.stop(hard=True)
        self.thread.join(15)
        assert not self.thread.is_alive()
        if self.error:
            raise self.error
