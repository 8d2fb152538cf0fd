"""A bounded load generator against a running `pypto serve` (or any OpenAI-compatible server).

For each concurrency in --concurrency it sends --requests streamed completions (closed loop:
each client sends its next request when its last one ends) of --prompt-tokens bytes (with
--prompt-spread F, a length drawn per prompt from --prompt-tokens x [1 - F, 1 + F]) and
--max-tokens new tokens (ignore_eos), and prints throughput (requests/s, generated tokens/s),
time to first token (the first streamed chunk with text; also the median of the first
wave, the first --concurrency requests), inter-token latency (between streamed chunks with
text), time per output token (TPOT: after the first, by the usage's token count, as chunks
may carry several tokens' text or none) and end-to-end latency (p50 / p99), and the share
of prompt tokens served from the prefix cache (the usage's cached_tokens). With
--shared-prefixes N each prompt is one of N fixed --prefix-tokens-byte prefixes (a system
prompt) followed by its own --prompt-tokens bytes. Against `pypto serve` it also prints
the server's own account of each level from /metrics: the router's TTFT, each request's
queue / prefill / decode phases in its engine, and the engine's steps and mean step time by
kind (so a slow first token can be told apart: queueing, slow prefill steps, or neither).
--warmup requests go first, untimed in the levels (their times printed apart): the very first
request of a run on the H200 took 814 ms against 24 ms for the rest (docs/benchmarks.md).
Loopback only.

Usage: python scripts/bench_serve_load.py --url http://127.0.0.1:8000 [--model tiny-moe]
       [--concurrency 1,8,32,128] [--requests 64] [--prompt-tokens 128] [--max-tokens 64]
       [--prompt-spread 0] [--shared-prefixes 0] [--prefix-tokens 512] [--warmup 1]
       [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import string
import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

# the server's own account of a level (deltas of /metrics, summed over replicas): the
# router's TTFT, each request's phases in its engine, and the engine's steps by kind
SERVER_SUMS = {"ttft": "pypto:time_to_first_token_seconds",
               "queue": "pypto:request_queue_time_seconds",
               "prefill": "pypto:request_prefill_time_seconds",
               "decode": "pypto:request_decode_time_seconds"}


def scrape(url: str) -> dict[str, float]:
    """Sums and counts of SERVER_SUMS, steps and step seconds by kind; {} if /metrics is
    not there (another server)."""
    try:
        text = httpx.get(url + "/metrics", timeout=10).text
    except httpx.HTTPError:
        return {}
    out: dict[str, float] = {}
    names = {v: k for k, v in SERVER_SUMS.items()}
    for fam in text_string_to_metric_families(text):
        for sample in fam.samples:
            if fam.name in names and sample.name.endswith(("_sum", "_count")):
                key = f"{names[fam.name]}{sample.name[len(fam.name):]}"
            elif fam.name in ("pypto:engine_steps", "pypto:engine_step_seconds") \
                    and sample.name.endswith("_total"):
                key = f"{fam.name[6:]}_{sample.labels.get('kind')}"
            else:
                continue
            out[key] = out.get(key, 0.0) + sample.value
    return out


def server_side(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Mean seconds per request of each SERVER_SUMS figure, steps and mean step seconds by
    kind, over one level."""
    d = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    out = {}
    for k in SERVER_SUMS:
        if d.get(f"{k}_count"):
            out[f"server_{k}_mean"] = d[f"{k}_sum"] / d[f"{k}_count"]
    for kind in ("prefill", "decode"):
        steps = d.get(f"engine_steps_{kind}", 0.0)
        out[f"{kind}_steps"] = steps
        if steps:
            out[f"{kind}_step_mean"] = d[f"engine_step_seconds_{kind}"] / steps
    return out


def pct(values: list[float], q: float) -> float:
    """The q-quantile, interpolated between neighbours (numpy's default): with a
    two-mode sample (a slow first wave, a fast second) the median lands between them
    instead of on one."""
    if not values:
        return float("nan")
    values = sorted(values)
    at = q * (len(values) - 1)
    lo = int(at)
    hi = min(lo + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (at - lo)


async def one(client: httpx.AsyncClient, url: str, body: dict, out: dict) -> None:
    start = time.perf_counter()
    sent = start - out["t0"]
    stamps: list[float] = []
    generated = 0
    async with client.stream("POST", url + "/v1/completions", json=body) as r:
        if r.status_code != 200:
            out["errors"] += 1
            await r.aread()
            return
        async for line in r.aiter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunk = json.loads(line[6:])
                if chunk.get("choices") and chunk["choices"][0].get("text"):
                    stamps.append(time.perf_counter())
                if chunk.get("usage"):
                    usage = chunk["usage"]
                    generated = usage["completion_tokens"]
                    out["prompt"] += usage["prompt_tokens"]
                    out["cached"] += (usage.get("prompt_tokens_details") or {}).get(
                        "cached_tokens", 0) or 0
    end = time.perf_counter()
    if stamps:
        out["ttft"].append(stamps[0] - start)
        out["itl"].extend(b - a for a, b in zip(stamps, stamps[1:], strict=False))
        if generated > 1:  # a chunk may carry several tokens' text, or none: count tokens
            out["tpot"].append((end - stamps[0]) / (generated - 1))
    out["e2e"].append(end - start)
    out["tokens"] += body["max_tokens"]
    # each request on its own (seconds from the level's start), to tell a first wave's
    # stall from a steady cost
    out["requests"].append({"sent": sent, "ttft": stamps[0] - start if stamps else None,
                            "e2e": end - start, "generated": generated})


def text(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(string.ascii_letters) for _ in range(n))


async def level(url: str, model: str, concurrency: int, requests: int, prompt_tokens: int,
                max_tokens: int, rng: random.Random, prefixes: list[str],
                spread: float = 0.0) -> dict:
    out = {"ttft": [], "itl": [], "tpot": [], "e2e": [], "tokens": 0, "errors": 0, "prompt": 0,
           "cached": 0, "requests": []}
    queue: asyncio.Queue[dict] = asyncio.Queue()
    for _ in range(requests):
        n = prompt_tokens if not spread else rng.randint(
            max(1, round(prompt_tokens * (1 - spread))), round(prompt_tokens * (1 + spread)))
        prompt = (rng.choice(prefixes) if prefixes else "") + text(rng, n)
        queue.put_nowait({"model": model, "prompt": prompt, "max_tokens": max_tokens,
                          "stream": True, "ignore_eos": True, "temperature": 0,
                          "stream_options": {"include_usage": True}})
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        async def worker() -> None:
            while not queue.empty():
                await one(client, url, queue.get_nowait(), out)
        start = out["t0"] = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - start
    done = len(out["e2e"])
    by_sent = sorted(out["requests"], key=lambda r: r["sent"])
    first_wave = [r["ttft"] for r in by_sent[:concurrency] if r["ttft"] is not None]
    return {"concurrency": concurrency, "requests": done, "errors": out["errors"],
            "req_per_s": done / wall, "tok_per_s": out["tokens"] / wall,
            "ttft_p50": pct(out["ttft"], .5), "ttft_p99": pct(out["ttft"], .99),
            "itl_p50": pct(out["itl"], .5), "itl_p99": pct(out["itl"], .99),
            "tpot_p50": pct(out["tpot"], .5), "tpot_p99": pct(out["tpot"], .99),
            "e2e_p50": pct(out["e2e"], .5), "e2e_p99": pct(out["e2e"], .99),
            "cached_share": out["cached"] / out["prompt"] if out["prompt"] else 0.0,
            "ttft_first_wave_p50": pct(first_wave, .5), "per_request": by_sent}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--model", default="tiny-moe")
    ap.add_argument("--concurrency", default="1,8,32,128")
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--prompt-spread", type=float, default=0.0, metavar="F",
                    help="each prompt's length drawn uniformly from prompt-tokens x [1 - F, "
                         "1 + F] (0: all the same): a server's costs per new prompt length "
                         "show only with lengths that vary, as served prompts do")
    ap.add_argument("--shared-prefixes", type=int, default=0)
    ap.add_argument("--prefix-tokens", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--warmup", type=int, default=1, metavar="N",
                    help="untimed requests sent first, one at a time (a server's first "
                         "request can pay one-time costs); their times are printed apart")
    ap.add_argument("--json")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    rows = []
    if args.warmup:
        before = scrape(args.url)
        w = asyncio.run(level(args.url, args.model, 1, args.warmup, args.prompt_tokens,
                              args.max_tokens, rng, []))
        w.update(server_side(before, scrape(args.url)))
        print(f"warm-up ({args.warmup} request(s), not in the levels): TTFT "
              + ", ".join(f"{r['ttft'] * 1e3:.1f}ms" for r in w["per_request"] if r["ttft"])
              + f"; the router's TTFT mean {w.get('server_ttft_mean', float('nan')) * 1e3:.1f}ms")
    print(f"{'conc':>5} {'req/s':>8} {'tok/s':>9} {'TTFT p50':>9} {'p99':>8} {'ITL p50':>8} "
          f"{'p99':>8} {'TPOT p50':>8} {'p99':>8} {'e2e p50':>8} {'p99':>8} {'errors':>6} "
          f"{'cached':>6} {'TTFT 1st wave':>13}")
    for c in (int(x) for x in args.concurrency.split(",")):
        # fresh prefixes per level: a level is never served from the previous one's cache
        prefixes = [text(rng, args.prefix_tokens) for _ in range(args.shared_prefixes)]
        before = scrape(args.url)
        r = asyncio.run(level(args.url, args.model, c, max(args.requests, c),
                              args.prompt_tokens, args.max_tokens, rng, prefixes,
                              args.prompt_spread))
        r.update(server_side(before, scrape(args.url)))
        rows.append(r)
        ms = {k: r[k] * 1e3 for k in r if k.endswith(("p50", "p99"))}
        print(f"{c:5d} {r['req_per_s']:8.2f} {r['tok_per_s']:9.1f} {ms['ttft_p50']:8.1f}ms "
              f"{ms['ttft_p99']:7.1f}ms {ms['itl_p50']:7.2f}ms {ms['itl_p99']:7.2f}ms "
              f"{ms['tpot_p50']:7.2f}ms {ms['tpot_p99']:7.2f}ms "
              f"{ms['e2e_p50']:7.0f}ms {ms['e2e_p99']:7.0f}ms {r['errors']:6d} "
              f"{r['cached_share']:6.1%} {ms['ttft_first_wave_p50']:11.1f}ms")
    print("median e2e over levels:", statistics.median(r["e2e_p50"] for r in rows))
    if any("server_ttft_mean" in r for r in rows):
        print("server side, means per request (router TTFT; the engine's queue, prefill and "
              "decode phases) and per step (executor time by kind):")
        print(f"{'conc':>5} {'TTFT':>9} {'queue':>9} {'prefill':>9} {'decode':>9} "
              f"{'prefill steps':>13} {'ms/step':>8} {'decode steps':>12} {'ms/step':>8}")
        for r in rows:
            ms = {k: r.get(k, float("nan")) * 1e3 for k in (
                "server_ttft_mean", "server_queue_mean", "server_prefill_mean",
                "server_decode_mean", "prefill_step_mean", "decode_step_mean")}
            print(f"{r['concurrency']:5d} {ms['server_ttft_mean']:7.1f}ms "
                  f"{ms['server_queue_mean']:7.1f}ms {ms['server_prefill_mean']:7.1f}ms "
                  f"{ms['server_decode_mean']:7.1f}ms {r.get('prefill_steps', 0):13.0f} "
                  f"{ms['prefill_step_mean']:6.2f}ms {r.get('decode_steps', 0):12.0f} "
                  f"{ms['decode_step_mean']:6.2f}ms")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
