"""Benchmark the replica engine: its host-side step, and serving on real ranks.

1. Host side (this part needs no model): the time to build one decode step of --seqs sequences
at --context tokens each, i.e. the scheduler's pick, the block tables and the StepPlan, plus
its msgpack encoding (what the leader hands the replica's other ranks), the followers'
decoding of it, and applying the sampled tokens (detokenization, stop rules, prefix-cache
bookkeeping). In the same run, the executor's side of that step: building the runner's
tensors from the plan (executor.batch.build_step: tokens, positions, slots and the (query,
block) pairs of varlen paged attention; before the one-forward step this took about 0.15 s).
Target: schedule + encode under 5 ms, and build_step under 5 ms, for 256 sequences at 4k
context. Medians (and p90) over --steps steps, --rounds rounds, in CPU time of the engine's
thread (time.thread_time), so other processes on a shared machine do not count; the wall
time of the same work is printed too.
2. Serving (one launched job per layout, `pypto launch`, unless --no-serving): each replica
   leader runs its share of a stream of --requests requests with mixed prompt (8..128) and
   output (8..64) lengths through the Engine over ReplicaExecutor (the other ranks follow),
   --rounds times, and prints tokens/s of: the engine (all requests queued at once,
   max_num_seqs in flight); the same requests served one at a time; and static batches of
   max_num_seqs requests in arrival order (prompts padded to the longest, every sequence
   decoded to the longest output of its batch, useful tokens counted) through the runner's
   run_prefill/run_decode views. Also the engine's own time per step, scheduling + plan
   hand-over, as a fraction of the step (median over steps), the hand-over alone in µs, and
   the DP lock-step vote (must_step). On a shared machine the ratios are also given per CPU
   second of the leader process (time.process_time), which other processes do not inflate.

Usage: .venv/bin/python scripts/bench_engine.py [--seqs 256] [--context 4096]
       [--block-size 16] [--steps 50] [--rounds 3] [--baseline-steps 50] [--no-baseline]
       [--requests 48] [--layouts one-rank,cpu-demo] [--threads 1] [--no-serving]
       [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from pypto_serving.engine.engine import Engine  # noqa: E402
from pypto_serving.engine.plan import StepPlan, StepResult  # noqa: E402
from pypto_serving.engine.sampling_params import SamplingParams  # noqa: E402
from pypto_serving.engine.tokenizer import ByteTokenizer  # noqa: E402

MODEL = {"name": "tiny-moe", "num_layers": 4, "hidden_size": 64, "num_attention_heads": 8,
         "num_kv_heads": 4, "intermediate_size": 128, "num_experts": 8, "experts_per_token": 2,
         "vocab_size": 256, "max_seq_len": 512}
SERVE = {"kv_block_size": 16, "max_num_seqs": 16, "max_num_batched_tokens": 256}
LAYOUTS = {
    "one-rank": {},
    "cpu-demo": {"data_parallel_size": 2, "tensor_parallel_size": 2,
                 "enable_expert_parallel": True},
}


def layout_config(name: str) -> dict:
    par = LAYOUTS[name]
    world = par.get("data_parallel_size", 1) * par.get("tensor_parallel_size", 1) * \
        par.get("pipeline_parallel_size", 1)
    return {"parallel": par, "model": MODEL, "serve": SERVE,
            "cluster": {"nnodes": 1, "devices_per_node": world, "platform": "cpu"}}


def make_requests(n: int, seed: int = 0) -> list[dict]:
    """Mixed prompt (8..128) and output (8..64) lengths, greedy, EOS ignored."""
    rng = random.Random(seed)
    return [{"rid": f"q{i}", "prompt": [rng.randrange(1, 256) for _ in range(rng.randint(8, 128))],
             "max_tokens": rng.randint(8, 64)} for i in range(n)]


# --- part 1: the host-side step -----------------------------------------------------------

class HandOverExecutor:
    """Stands in for the replica's ranks: encodes the plan as the leader would to send it,
    decodes it as a follower would, and 'samples' a fixed token; times both (CPU time)."""

    def __init__(self) -> None:
        self.encode_s: list[float] = []
        self.decode_s: list[float] = []
        self.plan_bytes = 0

    def execute(self, plan: StepPlan) -> StepResult:
        t0 = time.thread_time()
        data = plan.encode()
        t1 = time.thread_time()
        StepPlan.decode(data)
        t2 = time.thread_time()
        self.encode_s.append(t1 - t0)
        self.decode_s.append(t2 - t1)
        self.plan_bytes = len(data)
        return StepResult(plan.step_id, {c.seq_id: 65 for c in plan.chunks if c.sample})

    def must_step(self, has_work: bool) -> bool:
        return has_work

    def close(self) -> None:
        pass


def decode_ready_engine(seqs: int, context: int, block_size: int, extra: int) -> Engine:
    """An engine with `seqs` running requests whose prompts (context - 1 tokens, distinct)
    are prefilled, so the next steps are pure decodes at `context` tokens."""
    executor = HandOverExecutor()
    blocks = seqs * (-(-(context + extra) // block_size))
    engine = Engine(executor, num_blocks=blocks, block_size=block_size, max_num_seqs=seqs,
                    max_num_batched_tokens=seqs * context, max_model_len=context + extra,
                    tokenizer=ByteTokenizer())
    sp = SamplingParams(max_tokens=extra, ignore_eos=True)
    for i in range(seqs):
        prompt = [(i * 131 + j * 7) % 256 for j in range(context - 1)]
        prompt[0], prompt[1] = i % 256, i // 256  # distinct first blocks: no prefix sharing
        engine.add_request(f"r{i}", prompt, sp)
    engine.step()  # the whole prefill in one step (the budget allows it)
    engine.scheduler.max_num_batched_tokens = 8192
    executor.encode_s.clear()
    executor.decode_s.clear()
    return engine


def bench_host_step(seqs: int = 256, context: int = 4096, block_size: int = 16,
                    steps: int = 50) -> dict[str, list[float]]:
    """Per decode step, CPU seconds of this thread (the machine may be shared, so wall time
    would count other processes): schedule (plan built), encode, follower decode, and
    applying the tokens; plus the wall time of schedule + encode."""
    engine = decode_ready_engine(seqs, context, block_size, extra=steps + 1)
    executor: HandOverExecutor = engine.executor  # type: ignore[assignment]
    scheduler = engine.scheduler
    schedule = scheduler.schedule
    sched_cpu: list[float] = []
    wall: list[float] = []
    total: list[float] = []

    def timed_schedule():
        t0 = time.thread_time()
        out = schedule()
        sched_cpu.append(time.thread_time() - t0)
        return out

    scheduler.schedule = timed_schedule  # type: ignore[method-assign]
    for _ in range(steps):
        t0 = time.thread_time()
        engine.step()
        total.append(time.thread_time() - t0)
        assert engine.timing.num_tokens == seqs, "not a full decode step"
        wall.append(engine.timing.schedule_s + engine.timing.execute_s)
    enc, dec = executor.encode_s, executor.decode_s
    return {
        "schedule": sched_cpu, "encode": enc, "decode": dec,
        "update": [t - s - e - d for t, s, e, d in zip(total, sched_cpu, enc, dec, strict=True)],
        "schedule + encode": [s + e for s, e in zip(sched_cpu, enc, strict=True)],
        "wall: schedule + encode + decode": wall,
        "plan_bytes": [float(executor.plan_bytes)],
    }


def bench_baseline_build_step(seqs: int = 256, context: int = 4096, block_size: int = 16,
                              steps: int = 3) -> list[float]:
    """CPU seconds for the executor to build the same decode step's tensors
    (executor.batch.build_step: tokens, positions, slots, the (query, block) pairs)."""
    import torch

    from pypto_serving.executor.batch import DecodeBatch, build_step

    per = -(-context // block_size)
    tables = [list(range(i * per, (i + 1) * per)) for i in range(seqs)]
    batch = DecodeBatch(token_ids=[65] * seqs, positions=[context - 1] * seqs,
                        block_tables=tables)
    times = []
    for _ in range(steps):
        t0 = time.thread_time()
        build_step(batch, block_size, torch.device("cpu"))
        times.append(time.thread_time() - t0)
    return times


# --- part 2: serving, one launched job per layout -------------------------------------

def worker(spec_path: str) -> None:
    """One rank of a serving job (run by `pypto launch`)."""
    import torch

    from pypto_serving.engine.engine import Engine
    from pypto_serving.engine.sampling_params import SamplingParams
    from pypto_serving.engine.tokenizer import ByteTokenizer
    from pypto_serving.executor import distributed
    from pypto_serving.executor.generate import greedy_generate
    from pypto_serving.executor.kv_budget import replica_kv_pool
    from pypto_serving.executor.replica import ReplicaExecutor, follow
    from pypto_serving.executor.runner import ReferenceModelRunner

    spec = json.loads(Path(spec_path).read_text())
    torch.set_num_threads(spec["threads"])
    ctx = distributed.init_distributed()
    runner = ReferenceModelRunner(ctx)
    runner.load_weights()
    pool = replica_kv_pool(ctx, distributed.get_cpu_group("replica"))
    runner.init_kv_cache(pool.num_blocks)
    runner.warmup()
    dp, replicas = ctx.rank_info.dp, ctx.config.parallel.data_parallel_size
    mine = spec["requests"][dp::replicas]
    serve = ctx.config.serve

    def run_engine(executor, reqs) -> dict:
        engine = Engine(executor, num_blocks=pool.num_blocks, block_size=pool.block_size,
                        max_num_seqs=serve.max_num_seqs,
                        max_num_batched_tokens=serve.max_num_batched_tokens,
                        max_model_len=ctx.model.max_seq_len, tokenizer=ByteTokenizer())
        for r in reqs:
            engine.add_request(r["rid"], r["prompt"],
                               SamplingParams(max_tokens=r["max_tokens"], ignore_eos=True))
        tokens, fractions, handover, vote, steps = 0, [], [], [], 0
        start, cpu = time.perf_counter(), time.process_time()
        while True:
            v0 = time.perf_counter()
            go = executor.must_step(engine.has_work)
            vote.append(time.perf_counter() - v0)
            if not go:
                break
            h0 = executor.handover.seconds
            s0 = time.perf_counter()
            outs = engine.step()
            step_s = time.perf_counter() - s0
            h = executor.handover.seconds - h0
            fractions.append((engine.timing.schedule_s + h) / step_s)
            handover.append(h)
            tokens += sum(len(o.token_ids) for o in outs)
            steps += 1
        return {"seconds": time.perf_counter() - start, "cpu": time.process_time() - cpu,
                "tokens": tokens, "steps": steps,
                "overhead": fractions, "handover_s": handover, "vote_s": vote}

    out: dict = {"dp": dp, "rank": ctx.rank, "rounds": []}
    if ctx.is_replica_leader:
        executor = ReplicaExecutor(ctx, runner)
        for _ in range(spec["rounds"]):
            batched = run_engine(executor, mine)
            single = [run_engine(executor, [r]) for r in mine]
            out["rounds"].append({
                "engine": batched,
                "one_at_a_time": {"seconds": sum(s["seconds"] for s in single),
                                  "cpu": sum(s["cpu"] for s in single),
                                  "tokens": sum(s["tokens"] for s in single)}})
        executor.close()
    else:
        follow(ctx, runner)
    # static batches of max_num_seqs requests, in arrival order, one after the other
    batches = [mine[i:i + serve.max_num_seqs] for i in range(0, len(mine), serve.max_num_seqs)]
    useful = sum(r["max_tokens"] for r in mine)
    for i in range(spec["rounds"]):
        start, cpu = time.perf_counter(), time.process_time()
        for batch in batches:
            longest = max(len(r["prompt"]) for r in batch)
            padded = [r["prompt"] + [1] * (longest - len(r["prompt"])) for r in batch]
            greedy_generate(runner, padded, max(r["max_tokens"] for r in batch))
        if ctx.is_replica_leader:
            out["rounds"][i]["static"] = {"seconds": time.perf_counter() - start,
                                          "cpu": time.process_time() - cpu, "tokens": useful}
    if ctx.is_replica_leader:
        print(json.dumps(out), flush=True)
    distributed.destroy_distributed()


def launch(name: str, requests: list[dict], rounds: int, threads: int, work: Path) -> list[dict]:
    config = work / "config.json"
    config.write_text(json.dumps(layout_config(name)))
    spec = work / "spec.json"
    spec.write_text(json.dumps({"requests": requests, "rounds": rounds, "threads": threads}))
    python = ROOT / ".venv" / "bin" / "python"
    cmd = [str(python if python.exists() else sys.executable), "-m", "pypto_serving.cli.entry",
           "launch", "--config", str(config), "--standalone", __file__, "--worker", str(spec)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"{name}: job failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    rows = []
    for line in proc.stdout.splitlines():
        _, _, rest = line.partition(":")
        if line.startswith("[rank") and rest.startswith("{"):
            rows.append(json.loads(rest))
    return rows


def summarize(name: str, leaders: list[dict]) -> dict:
    """Per mode: tokens/s summed over replicas (they run side by side), median over rounds."""
    rounds = len(leaders[0]["rounds"])

    def rate(mode: str, clock: str = "seconds") -> float:
        per_round = []
        for i in range(rounds):
            per_round.append(sum(r["rounds"][i][mode]["tokens"] / r["rounds"][i][mode][clock]
                                 for r in leaders))
        return statistics.median(per_round)

    engine_runs = [r["rounds"][i]["engine"] for r in leaders for i in range(rounds)]
    overhead = [f for run in engine_runs for f in run["overhead"]]
    handover = [h for run in engine_runs for h in run["handover_s"]]
    vote = [v for run in engine_runs for v in run["vote_s"]]
    steps = [run["steps"] for run in engine_runs]
    return {"layout": name, "replicas": len(leaders), "engine": rate("engine"),
            "one_at_a_time": rate("one_at_a_time"), "static": rate("static"),
            "engine_cpu": rate("engine", "cpu"), "one_at_a_time_cpu": rate("one_at_a_time", "cpu"),
            "static_cpu": rate("static", "cpu"),
            "overhead": statistics.median(overhead), "handover_us": statistics.median(handover)
            * 1e6, "vote_us": statistics.median(vote) * 1e6, "steps": statistics.median(steps)}


def ms(values: list[float], q: float = 0.5) -> str:
    values = sorted(values)
    return f"{values[min(len(values) - 1, int(q * len(values)))] * 1e3:.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seqs", type=int, default=256)
    ap.add_argument("--context", type=int, default=4096)
    ap.add_argument("--block-size", type=int, default=16)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--baseline-steps", type=int, default=50)
    ap.add_argument("--no-baseline", action="store_true")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--requests", type=int, default=48, help="requests in the served stream")
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads per rank")
    ap.add_argument("--layouts", default=",".join(LAYOUTS))
    ap.add_argument("--no-serving", action="store_true", help="only the host-side part")
    ap.add_argument("--json", help="also write the serving figures to this file")
    args = ap.parse_args()
    if args.worker:
        worker(args.worker)
        return

    runs: dict[str, list[float]] = {}
    plan_bytes = 0.0
    for _ in range(args.rounds):
        r = bench_host_step(args.seqs, args.context, args.block_size, args.steps)
        plan_bytes = r.pop("plan_bytes")[0]
        for k, v in r.items():
            runs.setdefault(k, []).extend(v)
    baseline = None if args.no_baseline else bench_baseline_build_step(
        args.seqs, args.context, args.block_size, args.baseline_steps)

    console = Console(width=None if sys.stdout.isatty() else 200)
    title = (f"one decode step of {args.seqs} sequences at {args.context} tokens, block "
             f"{args.block_size} ({platform.node()}, {platform.processor() or platform.machine()})")
    table = Table(title=title)
    table.add_column("part (CPU time of the engine's thread)")
    table.add_column("median ms", justify="right")
    table.add_column("p90 ms", justify="right")
    labels = {"schedule": "schedule (pick + block tables + StepPlan)",
              "encode": f"plan encode (msgpack, {plan_bytes / 1024:.0f} KiB)",
              "schedule + encode": "schedule + encode (target < 5 ms)",
              "decode": "plan decode on a follower rank",
              "update": "apply tokens (detok, stops, prefix cache)",
              "wall: schedule + encode + decode": "wall time: schedule + encode + decode"}
    for name, label in labels.items():
        table.add_row(label, ms(runs[name]), ms(runs[name], 0.9))
    if baseline is not None:
        table.add_row("executor: build_step (the runner's tensors; target < 5 ms)",
                      ms(baseline), ms(baseline, 0.9))
    console.print(table)
    if args.no_serving:
        return
    requests = make_requests(args.requests)
    rows = []
    for name in [n for n in args.layouts.split(",") if n]:
        if name not in LAYOUTS:
            raise SystemExit(f"unknown layout {name}; known: {', '.join(LAYOUTS)}")
        work = Path(tempfile.mkdtemp(prefix=f"bench-engine-{name}-"))
        try:
            start = time.perf_counter()
            rows.append(summarize(name, launch(name, requests, args.rounds, args.threads,
                                               work)))
            print(f"{name}: {time.perf_counter() - start:.0f} s", file=sys.stderr)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    table = Table(title=f"serving {args.requests} requests (prompts 8..128, outputs 8..64) "
                        f"split over the replicas; max_num_seqs {SERVE['max_num_seqs']}, "
                        f"max_num_batched_tokens {SERVE['max_num_batched_tokens']}; medians "
                        f"of {args.rounds} rounds; {args.threads} thread(s) per rank")
    head = ["layout", "replicas", "engine tok/s", "one-at-a-time tok/s", "static batch tok/s",
            "engine / one-at-a-time", "engine / static", "same, per leader CPU second",
            "sched+handover / step", "handover µs", "must_step µs"]
    for h in head:
        table.add_column(h, justify="left" if h == "layout" else "right")
    for r in rows:
        table.add_row(r["layout"], str(r["replicas"]), f"{r['engine']:.0f}",
                      f"{r['one_at_a_time']:.0f}", f"{r['static']:.0f}",
                      f"{r['engine'] / r['one_at_a_time']:.2f}x",
                      f"{r['engine'] / r['static']:.2f}x",
                      f"{r['engine_cpu'] / r['one_at_a_time_cpu']:.2f}x / "
                      f"{r['engine_cpu'] / r['static_cpu']:.2f}x", f"{100 * r['overhead']:.1f}%",
                      f"{r['handover_us']:.0f}", f"{r['vote_us']:.0f}")
    console.print(table)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
