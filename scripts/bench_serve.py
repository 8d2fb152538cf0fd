#!/usr/bin/env python
"""Benchmark `pypto serve`'s router: routing policies on real replicas, and the router's own
added latency, each beside sglang-router (the `bench` extra) in the same run.

1. Added latency. One replica whose engine is real (Engine + EngineServer) over an instant
   executor (no model: each step answers at once), so only the serving path is timed.
   ours:  client -HTTP-> our router -ZMQ-> engine      vs  client -ZMQ-> engine
   sglang: client -HTTP-> sglang-router -HTTP-> our per-replica front -ZMQ-> engine
           vs client -HTTP-> that front directly
   HTTP floor: client -HTTP-> a bare uvicorn app with a canned answer (the HTTP exchange
   alone, which ours pays and direct ZMQ does not).
   Non-streaming completions, max_tokens 1, at concurrency 1 and 32 (aiohttp client).
2. Policies. Real replica workers (`python -m pypto_serving.engine.worker` under the
   launcher's ServiceLaunch, as `pypto serve` starts them) with a small KV pool, and two
   workloads: requests sharing a few long system prompts, and unique prompts. Every policy of
   ours, then sglang-router's cache_aware and round_robin (fronting our per-replica ports),
   against the same replicas; each run uses fresh prompts (a salt), runs interleave the
   routers, and the table shows medians over the runs. Streamed (httpx client):
   throughput, TTFT, ITL, end-to-end p50/p99, share of prompt tokens served from the cache.

Every router runs in its own process. Example:
    python scripts/bench_serve.py --runs 3 --requests 60 --concurrency 8
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import statistics
import string
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

import httpx

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = "tiny-moe"


# --- helper processes (this script re-run in a mode) ----------------------------------------

def run_instant_replica() -> None:
    """A replica whose engine is real but whose executor answers every step at once."""
    from pypto_serving.engine.engine import Engine
    from pypto_serving.engine.plan import StepPlan, StepResult
    from pypto_serving.engine.server import EngineServer
    from pypto_serving.engine.tokenizer import ByteTokenizer

    class InstantExecutor:
        def execute(self, plan: StepPlan) -> StepResult:
            return StepResult(plan.step_id, {c.seq_id: 65 for c in plan.chunks if c.sample})

        def must_step(self, has_work: bool) -> bool:
            return has_work

        def close(self) -> None:
            pass

    engine = Engine(InstantExecutor(), num_blocks=4096, block_size=16, max_num_seqs=256,
                    max_num_batched_tokens=8192, max_model_len=512, tokenizer=ByteTokenizer())
    server = EngineServer(engine, replica=0, model_name=MODEL)
    print(f"ENDPOINT {server.endpoint}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    server.run(stop)


def run_http_floor() -> None:
    """A bare uvicorn ASGI app answering every request with a canned completion: what any
    Python HTTP front pays (client and server HTTP work), with nothing behind it."""
    import uvicorn

    from pypto_serving.router.server import bind, run_loop

    body = json.dumps({"id": "cmpl-0", "object": "text_completion", "created": 0,
                       "model": MODEL, "choices": [{"index": 0, "text": "A", "logprobs": None,
                                                    "finish_reason": "length"}],
                       "usage": {"prompt_tokens": 11, "completion_tokens": 1,
                                 "total_tokens": 12}}).encode()
    headers = [(b"content-type", b"application/json"),
               (b"content-length", str(len(body)).encode())]

    async def app(scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    sock = bind("127.0.0.1", 0)
    print(f"URL http://127.0.0.1:{sock.getsockname()[1]}", flush=True)
    config = uvicorn.Config(app, log_level="warning", access_log=False, proxy_headers=False,
                            lifespan="off")
    run_loop(uvicorn.Server(config).serve(sockets=[sock]))


def run_router(endpoints: list[str], policy: str, external: bool) -> None:
    """Our router (or, external, one pinned front per replica) on free ports."""
    from pypto_serving.engine.tokenizer import ByteTokenizer
    from pypto_serving.router.app import AppSettings
    from pypto_serving.router.policies import make_policy
    from pypto_serving.router.server import Router, run_loop

    settings = AppSettings(MODEL, 512, max_concurrent_requests=4096)
    router = Router(make_policy(policy), ByteTokenizer(), settings,
                    external=len(endpoints) if external else None)
    for ep in router.endpoints:
        print(f"URL {ep.url}", flush=True)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, router.stop, True)
        task = asyncio.ensure_future(router.serve())
        while router.pool is None:
            await asyncio.sleep(0.01)
        want = set(range(len(endpoints)))
        changed = asyncio.Event()
        router.pool.on_change.append(lambda *_: changed.set())
        for i, ep in enumerate(endpoints):
            router.add_replica(i, ep)
        while set(router.pool.ready_ids) != want:
            changed.clear()
            await changed.wait()
        print("READY", flush=True)
        await task

    run_loop(main())


class Helper:
    """A helper process that prints lines we wait for."""

    def __init__(self, cmd: list[str], env: dict | None = None) -> None:
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True,
                                     env={**os.environ, **(env or {})})
        self.lines: list[str] = []

    def expect(self, prefix: str, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()  # type: ignore[union-attr]
            if not line:
                raise RuntimeError(f"{self.proc.args} ended: {self.lines[-5:]}")
            self.lines.append(line.rstrip())
            if line.startswith(prefix):
                return line[len(prefix):].strip()
        raise TimeoutError(prefix)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def our_router(endpoints: list[str], policy: str, external: bool = False
               ) -> tuple[Helper, list[str]]:
    h = Helper([sys.executable, __file__, "--mode", "router", "--policy", policy,
                "--endpoints", ",".join(endpoints)] + (["--external"] if external else []))
    urls = [h.expect("URL ") for _ in range(len(endpoints) if external else 1)]
    h.expect("READY")
    return h, urls


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sglang_router(worker_urls: list[str], policy: str) -> tuple[Helper, str]:
    port = free_port()
    h = Helper([sys.executable, "-m", "sglang_router.launch_router", "--host", "127.0.0.1",
                "--port", str(port), "--worker-urls", *worker_urls, "--policy", policy,
                "--prometheus-port", str(free_port()), "--log-level", "warn"])
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # it prints nothing at warn level: ask it
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200 and httpx.post(
                    url + "/v1/completions", json={"model": MODEL, "prompt": "warm",
                                                   "max_tokens": 1}, timeout=10
                    ).status_code == 200:
                return h, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    h.stop()
    raise TimeoutError("sglang-router did not start")


# --- load generation -----------------------------------------------------------------------

@dataclass
class Sample:
    ttft: float
    e2e: float
    itl: list[float] = field(default_factory=list)
    prompt: int = 0
    cached: int = 0
    completion: int = 0


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))]


async def run_load(url: str, prompts: list[str], concurrency: int, max_tokens: int,
                   rate: float | None, stream: bool = True) -> tuple[list[Sample], float]:
    sem = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    samples: list[Sample] = []
    rng = random.Random(0)

    async with httpx.AsyncClient(timeout=300, limits=limits) as client:
        async def one(prompt: str) -> None:
            async with sem:
                body = {"model": MODEL, "prompt": prompt, "max_tokens": max_tokens,
                        "temperature": 0, "ignore_eos": True}
                t0 = time.perf_counter()
                if not stream:
                    r = await client.post(url + "/v1/completions", json=body)
                    r.raise_for_status()
                    u = r.json()["usage"]
                    e = time.perf_counter() - t0
                    samples.append(Sample(e, e, [], u["prompt_tokens"],
                                          (u.get("prompt_tokens_details") or {})
                                          .get("cached_tokens", 0), u["completion_tokens"]))
                    return
                body |= {"stream": True, "stream_options": {"include_usage": True}}
                s = Sample(0.0, 0.0)
                last = None
                async with client.stream("POST", url + "/v1/completions", json=body) as r:
                    r.raise_for_status()
                    async for line in r.aiter_lines():
                        if not line.startswith("data: ") or line == "data: [DONE]":
                            continue
                        chunk = json.loads(line[6:])
                        now = time.perf_counter()
                        if chunk.get("choices") and chunk["choices"][0].get("text"):
                            if last is None:
                                s.ttft = now - t0
                            else:
                                s.itl.append(now - last)
                            last = now
                        if chunk.get("usage"):
                            u = chunk["usage"]
                            s.prompt, s.completion = u["prompt_tokens"], u["completion_tokens"]
                            s.cached = (u.get("prompt_tokens_details") or {}).get(
                                "cached_tokens", 0) or 0
                s.e2e = time.perf_counter() - t0
                samples.append(s)

        start = time.perf_counter()
        tasks = []
        for p in prompts:
            tasks.append(asyncio.ensure_future(one(p)))
            if rate:
                await asyncio.sleep(rng.expovariate(rate))
        await asyncio.gather(*tasks)
        return samples, time.perf_counter() - start


async def zmq_latency(endpoint: str, n: int, concurrency: int) -> list[float]:
    """add -> finished output straight over the engine protocol (no HTTP, no router)."""
    import zmq
    import zmq.asyncio

    from pypto_serving.engine import protocol

    ctx = zmq.asyncio.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.connect(endpoint)
    waiting: dict[str, asyncio.Future] = {}

    async def reader() -> None:
        while True:
            msg = protocol.decode((await sock.recv_multipart())[-1], protocol.ENGINE_OPS)
            if msg["op"] == "output" and msg["finished"]:
                fut = waiting.pop(msg["rid"], None)
                if fut:
                    fut.set_result(None)

    rtask = asyncio.ensure_future(reader())
    await sock.send(protocol.encode({"op": "stats"}))
    await asyncio.sleep(0.2)
    ids = list(b"hello world")
    sem = asyncio.Semaphore(concurrency)
    out: list[float] = []
    counter = iter(range(n))

    async def one() -> None:
        async with sem:
            rid = f"d{next(counter)}"
            fut = asyncio.get_running_loop().create_future()
            waiting[rid] = fut
            t0 = time.perf_counter()
            await sock.send(protocol.encode({"op": "add", "rid": rid, "prompt_token_ids": ids,
                                             "sampling": {"max_tokens": 1}}))
            await fut
            out.append(time.perf_counter() - t0)

    await asyncio.gather(*(one() for _ in range(n)))
    rtask.cancel()
    sock.close(0)
    ctx.term()
    return out


def http_latency(url: str, n: int, concurrency: int) -> list[float]:
    """Non-streaming completions (max_tokens 1) through `url` with aiohttp (the lighter
    client: at concurrency 32 on 2 cores httpx's own cost hides the routers')."""
    import aiohttp

    async def main() -> list[float]:
        out: list[float] = []
        sem = asyncio.Semaphore(concurrency)
        body = {"model": MODEL, "prompt": "hello world", "max_tokens": 1}
        conn = aiohttp.TCPConnector(limit=concurrency)
        async with aiohttp.ClientSession(connector=conn) as session:
            async def one() -> None:
                async with sem:
                    t0 = time.perf_counter()
                    async with session.post(url + "/v1/completions", json=body) as r:
                        assert r.status == 200, await r.text()
                        await r.read()
                    out.append(time.perf_counter() - t0)

            await asyncio.gather(*(one() for _ in range(n)))
        return out

    return asyncio.run(main())


# --- the two parts ---------------------------------------------------------------------------

def bench_added_latency(args, table) -> None:
    replica = Helper([sys.executable, __file__, "--mode", "instant-replica"])
    endpoint = replica.expect("ENDPOINT ")
    floor = Helper([sys.executable, __file__, "--mode", "http-floor"])
    floor_url = floor.expect("URL ")
    helpers = [replica, floor]
    try:
        ours, (ours_url,) = our_router([endpoint], "least_loaded")
        front, (front_url,) = our_router([endpoint], "least_loaded", external=True)
        helpers += [ours, front]
        sg = None
        if args.sglang:
            sg, sg_url = sglang_router([front_url], "round_robin")
            helpers.append(sg)
        for conc, n in ((1, args.latency_requests), (32, args.latency_requests * 3)):
            rows: dict[str, list[list[float]]] = {}
            for _ in range(args.runs):
                http_latency(ours_url, 20, conc)  # warm connections
                rows.setdefault("direct ZMQ", []).append(
                    asyncio.run(zmq_latency(endpoint, n, conc)))
                rows.setdefault("ours", []).append(http_latency(ours_url, n, conc))
                rows.setdefault("front", []).append(http_latency(front_url, n, conc))
                rows.setdefault("http floor", []).append(http_latency(floor_url, n, conc))
                if sg is not None:
                    rows.setdefault("sglang", []).append(http_latency(sg_url, n, conc))
            med = {k: (statistics.median(pct(r, 50) for r in v),
                       statistics.median(pct(r, 99) for r in v)) for k, v in rows.items()}
            ours_add = (med["ours"][0] - med["direct ZMQ"][0], med["ours"][1] -
                        med["direct ZMQ"][1])
            line = {"concurrency": conc, "requests": n, "runs": args.runs,
                    "direct_zmq_p50_ms": med["direct ZMQ"][0] * 1e3,
                    "ours_p50_ms": med["ours"][0] * 1e3, "ours_p99_ms": med["ours"][1] * 1e3,
                    "ours_added_p50_ms": ours_add[0] * 1e3,
                    "ours_added_p99_ms": ours_add[1] * 1e3,
                    "front_p50_ms": med["front"][0] * 1e3, "front_p99_ms": med["front"][1] * 1e3,
                    "http_floor_p50_ms": med["http floor"][0] * 1e3,
                    "http_floor_p99_ms": med["http floor"][1] * 1e3}
            if sg is not None:
                line |= {"sglang_p50_ms": med["sglang"][0] * 1e3,
                         "sglang_p99_ms": med["sglang"][1] * 1e3,
                         "sglang_added_p50_ms": (med["sglang"][0] - med["front"][0]) * 1e3,
                         "sglang_added_p99_ms": (med["sglang"][1] - med["front"][1]) * 1e3}
            table.append(line)
            print(json.dumps(line), file=sys.stderr, flush=True)
    finally:
        for h in reversed(helpers):
            h.stop()


def make_prompts(kind: str, n: int, salt: str, prefixes: int, prefix_len: int,
                 rng: random.Random) -> list[str]:
    def text(k: int) -> str:
        return "".join(rng.choice(string.ascii_lowercase + " ") for _ in range(k))

    if kind == "unique":
        return [f"{salt}{i} " + text(prefix_len + 16) for i in range(n)]
    systems = [f"{salt}{j} " + text(prefix_len) for j in range(prefixes)]
    return [rng.choice(systems) + f" question {i}: " + text(8) for i in range(n)]


def start_replicas(args):
    from pypto_serving.core.loader import resolve_config
    from pypto_serving.router.serve import ServeOptions
    from pypto_serving.router.serve import start_replicas as start

    cfg = resolve_config(None, None, {"parallel": {"data_parallel_size": args.dp}},
                         "tiny-moe", {}, None)
    data = cfg.model_dump()
    data["serve"]["kv_cache_bytes"] = args.kv_cache_bytes
    data["serve"]["max_num_seqs"] = args.concurrency
    from pypto_serving.core.config import ServingConfig

    cfg = ServingConfig.model_validate(data)
    log = open(os.path.join(args.log_dir, "replicas.log"), "w")
    launch = start(cfg, ServeOptions(max_restarts=0), stdout=log, stderr=log)
    endpoints: dict[int, str] = {}
    deadline = time.monotonic() + 300
    while len(endpoints) < args.dp and time.monotonic() < deadline:
        ev = launch.next_event(timeout=1)
        if ev is not None and ev.kind == "ready":
            for p in ev.payloads.values():
                if p.get("endpoint"):
                    endpoints[int(p["replica"])] = p["endpoint"]
        if ev is not None and ev.kind in ("failed", "stopped"):
            raise RuntimeError(ev.describe())
    return launch, [endpoints[i] for i in range(args.dp)], cfg


def bench_policies(args, table) -> None:
    launch, endpoints, cfg = start_replicas(args)
    print(f"replicas ready: {endpoints}", file=sys.stderr, flush=True)
    helpers: list[Helper] = []
    try:
        routers: dict[str, str] = {}
        for policy in args.policies:
            h, (url,) = our_router(endpoints, policy)
            helpers.append(h)
            routers[policy] = url
        if args.sglang:
            front, fronts = our_router(endpoints, "least_loaded", external=True)
            helpers.append(front)
            for policy in ("cache_aware", "round_robin"):
                h, url = sglang_router(fronts, policy)
                helpers.append(h)
                routers[f"sglang {policy}"] = url
        results: dict[tuple[str, str], list[dict]] = {}
        rng = random.Random(args.seed)
        for run in range(args.runs):
            for workload in ("shared-prefix", "unique"):
                for k, (name, url) in enumerate(routers.items()):
                    salt = f"{run}{workload[0]}{k} "
                    prompts = make_prompts(workload, args.requests, salt, args.prefixes,
                                           args.prefix_len, rng)
                    samples, wall = asyncio.run(run_load(url, prompts, args.concurrency,
                                                         args.max_tokens, args.rate))
                    itl = [x for s in samples for x in s.itl]
                    r = {"req_s": len(samples) / wall,
                         "tok_s": sum(s.completion for s in samples) / wall,
                         "ttft_p50": pct([s.ttft for s in samples], 50),
                         "ttft_p99": pct([s.ttft for s in samples], 99),
                         "itl_p50": pct(itl, 50), "itl_p99": pct(itl, 99),
                         "e2e_p50": pct([s.e2e for s in samples], 50),
                         "e2e_p99": pct([s.e2e for s in samples], 99),
                         "cached": sum(s.cached for s in samples) /
                         max(1, sum(s.prompt for s in samples))}
                    results.setdefault((workload, name), []).append(r)
                    print(f"run {run} {workload:13s} {name:22s} " + " ".join(
                        f"{k}={v:.3f}" for k, v in r.items()), file=sys.stderr, flush=True)
        for (workload, name), runs in results.items():
            table.append({"workload": workload, "router": name, "runs": len(runs),
                          **{k: statistics.median(r[k] for r in runs) for k in runs[0]}})
    finally:
        for h in reversed(helpers):
            h.stop()
        launch.stop(5.0)


def render(latency: list[dict], policies: list[dict], args) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=160)
    if latency:
        t = Table(title="router added latency (non-streaming, max_tokens 1, instant engine; "
                  f"aiohttp client; medians of {args.runs} runs)", title_justify="left")
        for col in ("conc", "direct ZMQ p50", "HTTP floor p50", "ours p50", "ours p99",
                    "ours added p50", "ours added p99", "front p50", "sglang p50",
                    "sglang p99", "sglang added p50", "sglang added p99"):
            t.add_column(col, justify="right")
        for r in latency:
            def f(k: str, r: dict = r) -> str:
                return f"{r[k]:.2f} ms" if k in r else "-"
            t.add_row(str(r["concurrency"]), f("direct_zmq_p50_ms"), f("http_floor_p50_ms"),
                      f("ours_p50_ms"),
                      f("ours_p99_ms"), f("ours_added_p50_ms"), f("ours_added_p99_ms"),
                      f("front_p50_ms"), f("sglang_p50_ms"), f("sglang_p99_ms"),
                      f("sglang_added_p50_ms"), f("sglang_added_p99_ms"))
        console.print(t)
    if policies:
        t = Table(title=f"policies on {args.dp} real replicas (tiny-moe, CPU; {args.requests} "
                  f"requests, concurrency {args.concurrency}, max_tokens {args.max_tokens}; "
                  f"streamed, httpx client; medians of {args.runs} runs)",
                  title_justify="left")
        for col in ("workload", "router", "req/s", "tok/s", "TTFT p50", "TTFT p99",
                    "ITL p50", "ITL p99", "e2e p50", "e2e p99", "cached"):
            t.add_column(col, justify="right" if col not in ("workload", "router") else "left")
        for r in policies:
            t.add_row(r["workload"], r["router"], f"{r['req_s']:.2f}", f"{r['tok_s']:.1f}",
                      *(f"{r[k] * 1e3:.0f} ms" for k in ("ttft_p50", "ttft_p99", "itl_p50",
                                                          "itl_p99", "e2e_p50", "e2e_p99")),
                      f"{r['cached']:.0%}")
        console.print(t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mode", choices=("bench", "instant-replica", "router", "http-floor"),
                    default="bench",
                    help=argparse.SUPPRESS)
    ap.add_argument("--endpoints", help=argparse.SUPPRESS)
    ap.add_argument("--external", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--policy", default="least_loaded", help=argparse.SUPPRESS)
    ap.add_argument("--part", choices=("all", "latency", "policies"), default="all")
    ap.add_argument("--runs", type=int, default=3, help="runs per figure (medians)")
    ap.add_argument("--requests", type=int, default=48, help="requests per policy run")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--rate", type=float, default=None, help="arrivals/s (default: closed loop)")
    ap.add_argument("--max-tokens", type=int, default=8)
    ap.add_argument("--latency-requests", type=int, default=300,
                    help="requests per latency run at concurrency 1 (x3 at 32)")
    ap.add_argument("--dp", type=int, default=2)
    ap.add_argument("--prefixes", type=int, default=10, help="shared system prompts")
    ap.add_argument("--prefix-len", type=int, default=192, help="bytes (= tokens) each")
    ap.add_argument("--kv-cache-bytes", type=int, default=2 << 20,
                    help="per rank: small, so that the cache must choose what it keeps")
    ap.add_argument("--policies", nargs="+", default=["round_robin", "least_loaded",
                                                        "power_of_two", "prefix_aware",
                                                        "session"])
    ap.add_argument("--no-sglang", dest="sglang", action="store_false")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="also write the figures here")
    ap.add_argument("--log-dir", default=None)
    args = ap.parse_args()
    if args.mode == "instant-replica":
        return run_instant_replica()
    if args.mode == "http-floor":
        return run_http_floor()
    if args.mode == "router":
        return run_router(args.endpoints.split(","), args.policy, args.external)
    if args.sglang and not _has_sglang():
        print("sglang-router is not installed (pip install -e .[bench]); running without it",
              file=sys.stderr)
        args.sglang = False
    import tempfile

    args.log_dir = args.log_dir or tempfile.mkdtemp(prefix="bench_serve-")
    latency: list[dict] = []
    policies: list[dict] = []
    if args.part in ("all", "latency"):
        bench_added_latency(args, latency)
    if args.part in ("all", "policies"):
        bench_policies(args, policies)
    render(latency, policies, args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"latency": latency, "policies": policies, "args": vars(args)}, f,
                      indent=1)


def _has_sglang() -> bool:
    import importlib.util

    return importlib.util.find_spec("sglang_router") is not None


if __name__ == "__main__":
    main()
