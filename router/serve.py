"""`pypto serve` below the CLI: the replicas under the launcher's ServiceLaunch (which owns
their processes), the router in this process, and the wiring between them.

The launcher's events drive the pool: "ready" (with each leader's EngineServer endpoint in
its payload) puts a replica in rotation, "failed"/"restarting" takes it out at once. Ctrl-C
(SIGINT) or SIGTERM drains: new requests get 503, those in flight finish up to
serve.drain_timeout_s, then the replicas are stopped and reaped; a second signal skips the
drain. The process is a child subreaper, so nothing the workers started outlives it.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

from ..core.config import ServingConfig
from .app import AppSettings
from .policies import make_policy
from .server import Router, run_loop

WORKER_MODULE = "pypto_serving.engine.worker"
"""The replica worker program the launcher runs on every rank."""


@dataclass(frozen=True)
class ServeOptions:
    """What the CLI adds to the config."""

    api_key: str | None = None
    max_restarts: int = 3
    log_dir: str | None = None
    hold_timeout_s: float = 120.0
    node_rank: int = 0
    master_addr: str | None = None
    master_port: int | None = None
    engine_host: str = "127.0.0.1"
    """Address the replica leaders bind (and so announce): the node's address when the
    router is on another node."""

    @property
    def router_url(self) -> str:
        """Where node 0's router is, seen from another node."""
        return f"http://{self.master_addr or '127.0.0.1'}"


def build_router(cfg: ServingConfig, api_key: str | None = None,
                 hold_timeout_s: float = 120.0) -> Router:
    """The router for `cfg` (binds its port(s) now, so the URL is known before serving)."""
    from ..engine.hf_tokenizer import load_tokenizer
    from .chat_template import CheckpointChatTemplate

    s = cfg.serve
    settings = AppSettings(model=cfg.model.name, max_model_len=cfg.model.max_seq_len,
                           api_key=api_key, max_request_bytes=s.max_request_bytes,
                           max_concurrent_requests=s.max_concurrent_requests)
    policy = make_policy(s.policy, abs_threshold=s.prefix_balance_abs_threshold,
                         rel_threshold=s.prefix_balance_rel_threshold)
    external = cfg.parallel.data_parallel_size \
        if cfg.parallel.data_parallel_load_balance == "external" else None
    tokenizer = load_tokenizer(cfg.model.path)  # the checkpoint's, or the byte tokenizer
    template = CheckpointChatTemplate(tokenizer) if cfg.model.path is not None else None
    return Router(policy, tokenizer, settings, host=s.host, port=s.port,
                  external=external, drain_timeout_s=s.drain_timeout_s,
                  hold_timeout_s=hold_timeout_s, chat_template=template)


def start_replicas(cfg: ServingConfig, options: ServeOptions, *, stdout: TextIO | None = None,
                   stderr: TextIO | None = None):
    """The ServiceLaunch of the replica workers (started; raises LaunchError for bad input).
    On one node the rendezvous takes a free port, so several servers can run side by side."""
    from ..launcher.plan import LaunchSpec
    from ..launcher.service import ServiceLaunch, service_plan

    one_node = cfg.cluster.nnodes == 1 and options.master_port is None
    spec = LaunchSpec(target=WORKER_MODULE, module=True, config=cfg,
                      max_restarts=options.max_restarts, log_dir=options.log_dir,
                      node_rank=options.node_rank, master_addr=options.master_addr,
                      master_port=options.master_port, standalone=one_node,
                      env={**os.environ, "PYPTO_ENGINE_HOST": options.engine_host})
    launch = ServiceLaunch(service_plan(spec), stdout=stdout, stderr=stderr)
    launch.start()
    return launch


def serve(cfg: ServingConfig, options: ServeOptions, *,
          on_listening: Callable[[Router], None] = lambda r: None,
          on_event: Callable[[object], None] = lambda e: None,
          say: Callable[[str], None] = lambda m: print(m, file=sys.stderr, flush=True)) -> int:
    """Run `pypto serve` until a signal (or the replicas' restarts run out); the exit code."""
    from ..launcher.prctl import become_subreaper

    router = build_router(cfg, options.api_key, options.hold_timeout_s)
    become_subreaper()
    launch = start_replicas(cfg, options)
    on_listening(router)
    signals: list[int] = []
    ended_by_launch = threading.Event()

    def pump() -> None:
        """Launcher events -> the router's loop (and the console), until the launch ends."""
        while True:
            event = launch.next_event(timeout=0.2)
            if event is not None:
                on_event(event)
                router.on_launch_event(event)
            elif launch.ended:
                if not router.stopping:
                    ended_by_launch.set()
                    router.stop(hard=True)
                return

    def on_signal(signum: int) -> None:
        signals.append(signum)
        if len(signals) == 1:
            say(f"{signal.Signals(signum).name}: draining in-flight requests (up to "
                f"{cfg.serve.drain_timeout_s:g} s; again to stop at once)")
            router.stop()
        else:
            router.stop(hard=True)
            launch.request_stop(0.0)

    def on_change(replica: int, ready: bool, reason: str) -> None:
        client = router.pool.replicas.get(replica) if router.pool else None
        where = f" at {client.endpoint}" if client else ""
        say(f"replica {replica} in rotation{where}" if ready else
            f"replica {replica} out of rotation: {reason}")

    async def main() -> None:
        loop = asyncio.get_running_loop()
        router.on_pool = lambda pool: pool.on_change.append(on_change)
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal, sig)
        threading.Thread(target=pump, name="pypto-serve-events", daemon=True).start()
        await router.serve()

    try:
        run_loop(main())
    finally:
        grace = 0.0 if len(signals) > 1 else None
        result = launch.stop(grace)
    if ended_by_launch.is_set():
        say(f"the replicas stopped: {result.cause or 'restarts ran out'}")
        return result.exit_code or 1
    return 0


def serve_remote_node(cfg: ServingConfig, options: ServeOptions, *,
                      on_event: Callable[[object], None] = lambda e: None,
                      say: Callable[[str], None] = lambda m: print(m, file=sys.stderr,
                                                                   flush=True)) -> int:
    """A node other than 0: its replicas only, no router; each replica that becomes ready is
    registered with node 0's router (POST /internal/replicas), and taken out there when the
    launcher sees it fail. Runs until a signal or the launch ends."""
    import httpx

    from ..launcher.prctl import become_subreaper

    url = f"{options.router_url}:{cfg.serve.port}/internal/replicas"
    headers = {"Authorization": f"Bearer {options.api_key}"} if options.api_key else {}
    node = options.node_rank
    become_subreaper()
    launch = start_replicas(cfg, options)
    stop = threading.Event()
    signals: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        signals.append(signum)
        stop.set()
        launch.request_stop(None if len(signals) == 1 else 0.0)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)

    def tell(body: dict) -> None:
        for attempt in range(50):  # the router may still be starting
            try:
                r = httpx.post(url, content=json.dumps(body), headers=headers, timeout=5)
                if r.status_code == 200:
                    return
                say(f"node 0's router refused {body}: {r.status_code} {r.text}")
                return
            except httpx.HTTPError as e:
                if stop.is_set() or attempt == 49:
                    say(f"cannot reach node 0's router at {url}: {e}")
                    return
                stop.wait(0.2)

    registered: dict[int, list[int]] = {}
    while True:
        event = launch.next_event(timeout=0.2)
        if event is None:
            if launch.ended:
                break
            continue
        on_event(event)
        group = f"node{node}/{event.group}"
        if event.kind == "ready":
            for payload in (event.payloads or {}).values():
                if isinstance(payload, dict) and payload.get("endpoint"):
                    replica = int(payload["replica"])
                    registered.setdefault(event.group, []).append(replica)
                    tell({"replica": replica, "endpoint": payload["endpoint"],
                          "group": group})
                    say(f"replica {replica} registered with {url}")
        elif event.kind in ("failed", "restarting", "stopped"):
            for replica in registered.pop(event.group, []):
                tell({"replica": replica, "down": True, "group": group,
                      "reason": f"node {node}: {event.kind}"})
    result = launch.wait()
    return 0 if signals else (result.exit_code or 1)
