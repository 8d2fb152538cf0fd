#!/usr/bin/env python
"""Checkpoint load time and peak RSS per rank: one rank vs TP 2 vs TP 4 (`pypto launch`, each
rank reading only its shard), next to transformers' `from_pretrained` of the same folder.

A random Llama-shaped checkpoint of a few hundred MB (fp32) is written once to a temp folder.
Each rank reports its RSS after imports (the runtime's base), its peak RSS (ru_maxrss) after
loading and reading every weight once (weights a loader leaves mmap'd count only once paged
in), the load seconds and whether loading imported sympy / torch._dynamo (torch's Python meta
kernels pull them in); medians over --runs, runs interleaved. The baseline rows build the
model the earlier way, all of it under `torch.device("meta")`, then read the same shard.
Usage:

    .venv/bin/python scripts/bench_load.py [--runs 3] [--hidden 768] [--layers 6]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

BIN = Path(sys.executable).parent

OURS = """\
import json, os, resource, sys, time
import psutil
from pypto_serving.executor import distributed
from pypto_serving.executor.runner import ReferenceModelRunner
ctx = distributed.init_distributed()
base = psutil.Process().memory_info().rss
start = time.perf_counter()
runner = ReferenceModelRunner(ctx)
if sys.argv[1:] == ["meta-device-build"]:  # the earlier build: everything on meta
    import torch
    from pypto_serving.executor import checkpoint as ck
    from pypto_serving.executor.model import Rotary, Transformer
    spec = ctx.model
    with torch.device("meta"):
        model = Transformer(spec)
    model = ck.apply_ep(ck.apply_tp(ck.apply_pp(model, ctx), ctx), ctx)
    model.rotary = Rotary(spec.head_dim, spec.max_seq_len, spec.rope_theta, spec.rope_scaling)
    for block in model.layers:
        block.attention.rotary = [model.rotary]
    ck.load_shard(model, ctx)
    runner.model = model
else:
    runner.load_weights()
took = time.perf_counter() - start
heavy = "sympy" in sys.modules or "torch._dynamo" in sys.modules
touched = sum(float(p.sum()) for p in runner.model.parameters())  # page in mmap'd weights
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print("RESULT " + json.dumps({"rank": ctx.rank, "base": base, "peak": peak, "s": took,
                              "heavy": heavy}))
distributed.destroy_distributed()
"""

THEIRS = """\
import json, resource, sys, time
import psutil, torch
from transformers import AutoModelForCausalLM
base = psutil.Process().memory_info().rss
start = time.perf_counter()
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32)
took = time.perf_counter() - start
heavy = "sympy" in sys.modules or "torch._dynamo" in sys.modules
touched = sum(float(p.sum()) for p in model.parameters())  # page in mmap'd weights
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print("RESULT " + json.dumps({"rank": 0, "base": base, "peak": peak, "s": took,
                              "heavy": heavy}))
"""


def write_checkpoint(folder: Path, hidden: int, layers: int) -> int:
    """A random Llama checkpoint (config.json, model.safetensors, tokenizer); its bytes."""
    from safetensors.torch import save_file

    from pypto_serving.core.config import ModelSpec
    from pypto_serving.core.hf_config import model_fields_from_checkpoint
    from pypto_serving.executor.tiny_checkpoint import (
        hf_config,
        random_weights,
        write_tokenizer,
    )

    cfg = {**hf_config("llama"), "hidden_size": hidden, "num_hidden_layers": layers,
           "num_attention_heads": hidden // 64, "num_key_value_heads": 4,
           "intermediate_size": hidden * 8 // 3 // 64 * 64, "vocab_size": 16384,
           "tie_word_embeddings": False}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(cfg))
    write_tokenizer(folder)
    spec = ModelSpec.model_validate(model_fields_from_checkpoint(folder))
    save_file(random_weights(spec, 0), str(folder / "model.safetensors"))
    return (folder / "model.safetensors").stat().st_size


def run(cmd: list[str], env: dict[str, str]) -> list[dict]:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return [json.loads(line.split("RESULT ", 1)[1]) for line in
            (proc.stdout + proc.stderr).splitlines() if "RESULT " in line]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--layers", type=int, default=6)
    args = ap.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "model"
        size = write_checkpoint(folder, args.hidden, args.layers)
        (Path(tmp) / "ours.py").write_text(OURS)
        (Path(tmp) / "theirs.py").write_text(THEIRS)
        jobs = {"transformers from_pretrained": [str(BIN / "python"), str(Path(tmp) / "theirs.py"),
                                                 str(folder)]}
        for tp in (1, 2, 4):
            for label, extra in (("", []), (" meta-device build", ["meta-device-build"])):
                jobs[f"pypto TP {tp}{label}"] = [
                    str(BIN / "pypto"), "launch", "--standalone", "--platform", "cpu",
                    "--model", str(folder), "-tp", str(tp), str(Path(tmp) / "ours.py"), *extra]
        results: dict[str, list[list[dict]]] = {k: [] for k in jobs}
        for _ in range(args.runs):
            for name, cmd in jobs.items():
                results[name].append(run(cmd, env))
    mib = 1 << 20
    print(f"checkpoint {size / mib:.0f} MiB fp32 (hidden {args.hidden}, {args.layers} layers, "
          f"vocab 16384); {platform.node()}, {os.cpu_count()} cores; medians of {args.runs}")
    print(f"{'loader':34} {'ranks':>5} {'load s':>7} {'base MiB':>9} {'peak MiB':>9} "
          f"{'peak-base':>9} {'(size/ranks)':>12} {'sympy/dynamo':>12}")
    for name, runs in results.items():
        ranks = len(runs[0])
        med = {k: statistics.median(max(r[k] for r in one) for one in runs)
               for k in ("s", "base", "peak")}
        grown = statistics.median(max(r["peak"] - r["base"] for r in one) for one in runs)
        heavy = "yes" if any(r["heavy"] for one in runs for r in one) else "no"
        print(f"{name:34} {ranks:>5} {med['s']:>7.2f} {med['base'] / mib:>9.0f} "
              f"{med['peak'] / mib:>9.0f} {grown / mib:>9.0f} {size / ranks / mib:>12.0f} "
              f"{heavy:>12}")


if __name__ == "__main__":
    main()
