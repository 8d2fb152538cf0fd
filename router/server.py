"""Running the router: uvicorn on sockets bound here, replicas joining and leaving as the
launcher reports, and a drain on shutdown.

`Router` is what `pypto serve` (and the tests) drive: `serve()` runs until `stop()` is called
from any thread or signal handler; it then refuses new requests, lets those in flight finish
up to the drain timeout, and closes. Launcher events arrive from its own thread through
`on_launch_event`, which hands them to the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import socket
import threading
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any

import uvicorn

from .app import AppSettings, Tokenizer, create_app
from .chat_template import ChatTemplate
from .policies import Policy
from .pool import ReplicaPool

log = logging.getLogger("pypto.router")


def run_loop(main: Coroutine[Any, Any, Any]) -> Any:
    """Run `main` on uvloop where it is installed (uvicorn's own choice), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket (port 0: a free one), bound before uvicorn starts so the real
    port is known and printed. Its protocol is named (IPPROTO_TCP): asyncio turns Nagle off
    only on sockets that say so, and with Nagle on every response waited ~40 ms for an ACK."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: `pypto serve` owns Ctrl-C (to drain)."""

    def install_signal_handlers(self) -> None:  # uvicorn < 0.29
        pass

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:  # uvicorn >= 0.29
        yield


@dataclass
class Endpoint:
    """One HTTP front: the router (all replicas) or, under external load balancing, one
    replica's own port."""

    host: str
    port: int
    replica: int | None = None
    sock: socket.socket | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


class Router:
    """The pool, its HTTP front(s), and the bridge from the launcher's events."""

    def __init__(self, policy: Policy, tokenizer: Tokenizer, settings: AppSettings, *,
                 host: str = "127.0.0.1", port: int = 0, external: int | None = None,
                 drain_timeout_s: float = 10.0, hold_timeout_s: float = 60.0,
                 chat_template: ChatTemplate | None = None) -> None:
        """`external`: expose each of that many replicas on its own port (port, port+1, ...;
        free ports when port is 0) instead of one routed front."""
        self.settings = settings
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        self.policy = policy
        self.drain_timeout_s = drain_timeout_s
        self.hold_timeout_s = hold_timeout_s
        if external is None:
            self.endpoints = [Endpoint(host, port)]
        else:
            self.endpoints = [Endpoint(host, port + i if port else 0, replica=i)
                              for i in range(external)]
        for ep in self.endpoints:
            ep.sock = bind(ep.host, ep.port)
            ep.port = ep.sock.getsockname()[1]
        self.pool: ReplicaPool | None = None
        self.apps: list[Any] = []
        self.loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._stop_requested = threading.Event()
        self._hard_stop = False
        self.started = threading.Event()
        self.on_pool: Callable[[ReplicaPool], None] = lambda pool: None
        """Called with the pool as serve() creates it (to subscribe to its changes)."""

    @property
    def url(self) -> str:
        return self.endpoints[0].url

    @property
    def stopping(self) -> bool:
        return self._stop_requested.is_set()

    # -- control from other threads -----------------------------------------------------

    def stop(self, hard: bool = False) -> None:
        """Begin the shutdown (thread- and signal-safe); a second call (or hard) skips the
        drain."""
        self._hard_stop = hard or self._stop_requested.is_set()
        self._stop_requested.set()
        if self.loop is not None and self._stop is not None:
            with contextlib.suppress(RuntimeError):  # already closed: nothing to stop
                self.loop.call_soon_threadsafe(self._stop.set)

    def on_launch_event(self, event: Any) -> None:
        """A launcher LaunchEvent (from any thread): replicas join at "ready", leave at
        "failed"/"restarting"/"stopped"."""
        if self.loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody to tell
                self.loop.call_soon_threadsafe(self.apply_launch_event, event)

    def apply_launch_event(self, event: Any) -> None:
        pool = self.pool
        if pool is None:
            return
        kind = event.kind
        if kind == "ready":
            for payload in (event.payloads or {}).values():
                if isinstance(payload, dict) and payload.get("endpoint"):
                    self.add_replica(int(payload.get("replica", event.group)),
                                     str(payload["endpoint"]), group=event.group)
        elif kind in ("failed", "restarting", "stopped"):
            pool.mark_group_down(event.group, f"launcher: {kind}"
                                 + (f" ({event.cause})" if getattr(event, "cause", None)
                                    else ""))

    def add_replica(self, replica: int, endpoint: str, group: int | None = None) -> None:
        """On the loop thread: connect to a replica leader's EngineServer."""
        assert self.pool is not None
        self.pool.add(replica, endpoint, group=group)

    # -- running -------------------------------------------------------------------------

    async def serve(self) -> None:
        """Serve until stop(); then drain and close. Runs in the calling thread's loop."""
        self.loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        if self._stop_requested.is_set():
            self._stop.set()
        self.pool = ReplicaPool(self.policy, hold_timeout_s=self.hold_timeout_s)
        self.on_pool(self.pool)
        servers = []
        for ep in self.endpoints:
            pool_view = self.pool if ep.replica is None else _PinnedPool(self.pool, ep.replica)
            app = create_app(pool_view, self.tokenizer, self.settings,  # type: ignore[arg-type]
                             chat_template=self.chat_template)
            self.apps.append(app)
            # no proxy-headers middleware: the router is the front, not behind a proxy
            config = uvicorn.Config(app, log_level="warning", access_log=False,
                                    proxy_headers=False, timeout_graceful_shutdown=1,
                                    lifespan="off")
            servers.append(_Server(config))
        tasks = [asyncio.ensure_future(s.serve(sockets=[ep.sock]))
                 for s, ep in zip(servers, self.endpoints, strict=True)]
        # What exists now (the apps, FastAPI's and pydantic's schemas) lives as long as the
        # router: out of the collector's sight, each request's collections scan less.
        gc.freeze()
        self.started.set()
        try:
            await self._stop.wait()
            await self._drain()
        finally:
            for s in servers:
                s.should_exit = True
            await asyncio.wait(tasks, timeout=5)
            await self.pool.close()

    async def _drain(self) -> None:
        for app in self.apps:
            app.state.router.draining = True
        if self._hard_stop or self.pool is None:
            return
        log.info("draining %d in-flight requests (up to %g s)", self.pool.in_flight,
                 self.drain_timeout_s)
        waiter = asyncio.ensure_future(self.pool.drained(self.drain_timeout_s))
        hard = asyncio.ensure_future(self._wait_hard())
        await asyncio.wait({waiter, hard}, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        hard.cancel()

    async def _wait_hard(self) -> None:
        while not self._hard_stop:
            await asyncio.sleep(0.05)


class _PinnedPool:
    """A view of the pool that routes everything to one replica (external load balancing)."""

    def __init__(self, pool: ReplicaPool, replica: int) -> None:
        self._pool = pool
        self.replica = replica

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pool, name)

    @property
    def ready_ids(self) -> list[int]:
        return [r for r in self._pool.ready_ids if r == self.replica]

    @property
    def replicas(self) -> dict:
        return {r: c for r, c in self._pool.replicas.items() if r == self.replica}

    async def generate(self, job: Any) -> Any:
        async for msg in self._pool.generate(job, only=self.replica):
            yield msg
