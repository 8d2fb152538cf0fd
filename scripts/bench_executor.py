"""Benchmark the executor: decode speed of the reference model under each layout.

For every layout one job is launched (`pypto launch` when it is installed, else torchrun);
each rank loads the reference model sharded by its ParallelContext, warms up, then runs
--runs runs of prefill + --steps decode steps on --seqs sequences per replica, with one
intra-op thread per rank (--threads), so layouts differ only in how the work is split and
what it costs to communicate. The whole list of layouts is run --rounds times, interleaved,
so load from other processes spreads over all of them. Printed per layout: the median
decode step time (ms, over every step of every run and round), decode tokens/s summed over
DP replicas, the ratio to the one-rank baseline of the same model, and the bytes each group
kind moved per decode step on rank 0 (as counted by the group helpers).

On a GPU machine pass --platform cuda (NCCL); each layout needs that many GPUs.

Usage: .venv/bin/python scripts/bench_executor.py [--runs 3] [--rounds 2] [--steps 16]
       [--layouts a,b] [--platform cpu|cuda|auto] [--hidden 256] [--threads 1] [--plain]
"""

from __future__ import annotations

import argparse
import json
import os
import platform as host_platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# name -> (model kind, parallel section)
LAYOUTS: dict[str, tuple[str, dict]] = {
    "dense-tp1": ("dense", {}),
    "dense-tp2": ("dense", {"tensor_parallel_size": 2}),
    "dense-tp4": ("dense", {"tensor_parallel_size": 4}),
    "dense-pp2": ("dense", {"pipeline_parallel_size": 2}),
    "dense-pp4": ("dense", {"pipeline_parallel_size": 4}),
    "dense-pp2-tp2": ("dense", {"pipeline_parallel_size": 2, "tensor_parallel_size": 2}),
    "dense-dp2-tp2": ("dense", {"data_parallel_size": 2, "tensor_parallel_size": 2}),
    "moe-tp1": ("moe", {}),
    "moe-tp2": ("moe", {"tensor_parallel_size": 2}),
    "moe-tp4-ep": ("moe", {"tensor_parallel_size": 4, "enable_expert_parallel": True}),
    "moe-dp4-ep": ("moe", {"data_parallel_size": 4, "enable_expert_parallel": True}),
    "moe-dp2-tp2-ep": ("moe", {"data_parallel_size": 2, "tensor_parallel_size": 2,
                               "enable_expert_parallel": True}),
    "moe-dp2-tp2-ep-ag-rs": ("moe", {"data_parallel_size": 2, "tensor_parallel_size": 2,
                                     "enable_expert_parallel": True,
                                     "all2all_backend": "allgather_reducescatter"}),
}
GROUP_KINDS = ("tp", "pp", "dp", "ep")


def model_section(kind: str, hidden: int) -> dict:
    return {
        "name": f"bench-{kind}", "num_layers": 4, "hidden_size": hidden,
        "num_attention_heads": 8, "num_kv_heads": 4, "intermediate_size": 2 * hidden,
        "num_experts": 8 if kind == "moe" else 0, "experts_per_token": 2,
        "vocab_size": 4 * hidden, "max_seq_len": 256, "dtype": "float32",
    }


def layout_config(name: str, hidden: int, platform: str) -> dict:
    kind, parallel = LAYOUTS[name]
    world = 1
    for key in ("data_parallel_size", "tensor_parallel_size", "pipeline_parallel_size"):
        world *= parallel.get(key, 1)
    return {"parallel": parallel, "model": model_section(kind, hidden),
            "cluster": {"nnodes": 1, "devices_per_node": world, "platform": platform},
            "serve": {"kv_block_size": 16, "max_num_seqs": 16}}


# --- worker side -------------------------------------------------------------------------------

def worker(out_dir: str, seqs: int, prompt_len: int, steps: int, runs: int, threads: int
           ) -> None:
    import random

    import torch

    torch.set_num_threads(threads)
    from pypto_serving.executor import distributed
    from pypto_serving.executor.generate import greedy_generate
    from pypto_serving.executor.runner import ReferenceModelRunner

    torch.manual_seed(0)
    ctx = distributed.init_distributed()
    runner = ReferenceModelRunner(ctx)
    runner.load_weights()
    runner.init_kv_cache()
    runner.warmup()
    rng = random.Random(ctx.rank_info.dp)
    vocab = ctx.model.vocab_size
    decode_s, prefill_s, per_step_bytes = [], [], []

    def on_step(i, _out):
        if i > 0:  # decode steps only
            per_step_bytes.append({k: v for k, v in distributed.comm_stats().items()})
        distributed.reset_comm_stats()

    for _ in range(runs):
        prompts = [[rng.randrange(vocab) for _ in range(prompt_len)] for _ in range(seqs)]
        distributed.reset_comm_stats()
        gen = greedy_generate(runner, prompts, steps + 1, on_step=on_step)
        prefill_s.append(gen.step_seconds[0])
        decode_s.extend(gen.step_seconds[1:])
    ctx.world.barrier()
    bytes_per_step = {
        kind: statistics.mean(sum(op["bytes"] for op in s.get(kind, {}).values())
                              for s in per_step_bytes)
        for kind in GROUP_KINDS
    }
    Path(out_dir, f"rank{ctx.rank}.json").write_text(json.dumps({
        "rank": ctx.rank, "dp": ctx.rank_info.dp, "tp": ctx.rank_info.tp,
        "pp": ctx.rank_info.pp, "decode_s": decode_s, "prefill_s": prefill_s,
        "bytes_per_step": bytes_per_step, "device": str(ctx.device),
    }))
    distributed.destroy_distributed()


# --- driver side -------------------------------------------------------------------------------

def launch(config: dict, args: argparse.Namespace, work: Path) -> list[dict]:
    config_path = work / "config.json"
    config_path.write_text(json.dumps(config))
    out = work / "out"
    out.mkdir()
    worker_args = ["--worker", str(out), "--seqs", str(args.seqs), "--prompt-len",
                   str(args.prompt_len), "--steps", str(args.steps), "--runs", str(args.runs),
                   "--threads", str(args.threads)]
    world = config["cluster"]["devices_per_node"]
    pypto = Path(sys.executable).parent / "pypto"
    if _has_launch(pypto):
        cmd = [str(pypto), "launch", "--config", str(config_path), __file__, *worker_args]
        env = dict(os.environ)
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc-per-node={world}", __file__, *worker_args]
        env = {**os.environ, "PYPTO_CONFIG": str(config_path)}
    env["OMP_NUM_THREADS"] = str(args.threads)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode:
        raise SystemExit(f"layout job failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return [json.loads(p.read_text()) for p in sorted(out.glob("rank*.json"))]


def _has_launch(pypto: Path) -> bool:
    if not pypto.exists():
        return False
    probe = subprocess.run([str(pypto), "launch", "--help"], capture_output=True, text=True)
    return probe.returncode == 0


def summarize(name: str, rounds: list[list[dict]], seqs: int) -> dict:
    """One row from every round's ranks: medians over all decode steps of all rounds."""
    replicas, prefill = {}, []
    for ranks in rounds:
        for r in ranks:  # the replica's first rank times its steps
            if r["tp"] == 0 and r["pp"] == 0:
                replicas.setdefault(r["dp"], []).extend(r["decode_s"])
            if r["rank"] == 0:
                prefill.extend(r["prefill_s"])
    replicas = {dp: statistics.median(times) for dp, times in replicas.items()}
    step = statistics.median(replicas.values())
    rank0 = next(r for r in rounds[-1] if r["rank"] == 0)
    return {
        "layout": name, "world": len(rounds[-1]), "step_ms": step * 1e3,
        "tok_s": sum(seqs / s for s in replicas.values()),
        "prefill_ms": statistics.median(prefill) * 1e3,
        "bytes": rank0["bytes_per_step"], "device": rank0["device"],
    }


def _fmt_bytes(n: float) -> str:
    if n == 0:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def render(rows: list[dict], plain: bool) -> str:
    base = {r["layout"].split("-")[0]: r for r in rows if r["layout"].endswith("-tp1")}
    head = ["layout", "ranks", "decode step ms", "decode tok/s", "vs 1 rank",
            "prefill ms", *[f"{k} B/step" for k in GROUP_KINDS]]
    lines = [head]
    for r in rows:
        b = base.get(r["layout"].split("-")[0])
        ratio = f"{r['tok_s'] / b['tok_s']:.2f}x" if b else "n/a"
        lines.append([r["layout"], str(r["world"]), f"{r['step_ms']:.2f}", f"{r['tok_s']:.0f}",
                      ratio, f"{r['prefill_ms']:.1f}",
                      *[_fmt_bytes(r["bytes"][k]) for k in GROUP_KINDS]])
    widths = [max(len(row[i]) for row in lines) for i in range(len(head))]
    sep = "  " if plain else " | "
    out = [sep.join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in lines]
    if not plain:
        out = ["| " + o + " |" for o in out]
        out.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--runs", type=int, default=3, help="prefill + decode runs per job")
    ap.add_argument("--rounds", type=int, default=2, help="passes over all layouts")
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads per rank")
    ap.add_argument("--steps", type=int, default=16, help="decode steps per run")
    ap.add_argument("--seqs", type=int, default=8, help="sequences per replica")
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--platform", default="cpu", choices=["cpu", "cuda", "npu", "auto"])
    ap.add_argument("--layouts", default=",".join(LAYOUTS))
    ap.add_argument("--max-world", type=int, default=None,
                    help="skip layouts needing more ranks (e.g. GPUs on this machine)")
    ap.add_argument("--json", help="also write the rows to this file")
    ap.add_argument("--plain", action="store_true", help="plain columns instead of markdown")
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args.seqs, args.prompt_len, args.steps, args.runs, args.threads)
        return
    names = [n for n in args.layouts.split(",") if n]
    unknown = [n for n in names if n not in LAYOUTS]
    if unknown:
        raise SystemExit(f"unknown layout(s) {', '.join(unknown)}; known: {', '.join(LAYOUTS)}")
    configs = {name: layout_config(name, args.hidden, args.platform) for name in names}
    if args.max_world:
        configs = {n: c for n, c in configs.items()
                   if c["cluster"]["devices_per_node"] <= args.max_world}
    results: dict[str, list[list[dict]]] = {name: [] for name in configs}
    for round_no in range(args.rounds):
        for name, config in configs.items():
            work = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
            try:
                start = time.perf_counter()
                results[name].append(launch(config, args, work))
                print(f"round {round_no + 1}: {name} ({time.perf_counter() - start:.0f} s)",
                      file=sys.stderr)
            finally:
                shutil.rmtree(work, ignore_errors=True)
    rows = [summarize(name, rounds, args.seqs) for name, rounds in results.items()]
    print(f"# executor decode benchmark: hidden {args.hidden}, 4 layers, {args.seqs} seqs x "
          f"prompt {args.prompt_len} per replica, {args.steps} decode steps x {args.runs} runs x "
          f"{args.rounds} rounds (medians), {args.threads} thread(s) per rank; "
          f"{host_platform.machine()} {os.cpu_count()} cpus, device "
          f"{rows[0]['device'] if rows else '?'}")
    print(render(rows, args.plain))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
