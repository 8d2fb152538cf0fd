"""The decode step's linear layers on one GPU: cuBLAS (F.linear) against the skinny Triton
kernel (executor/skinny_linear.py), shape by shape, in one run.

For each weight of the profile (fused QKV, attention output, fused gate/up, down, LM head)
and each row count (a decode batch), the time of one call and the bandwidth it reaches
(weight bytes / time), for cuBLAS, for the kernel's default tiling and, with --sweep, for the
best of a grid of tilings. Calls run inside a CUDA graph (as in a decode step) over enough
copies of the weight to exceed the L2 cache, so each reads its weight from device memory;
medians of --runs replays.

Usage (on a GPU): python scripts/bench_linear.py [--model dense-1.5b-shape] [--rows 1,2,4,8,16]
       [--sweep 1,8] [--runs 7] [--json FILE]
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from pypto_serving.core.loader import resolve_config  # noqa: E402
from pypto_serving.executor.skinny_linear import (  # noqa: E402
    SkinnyConfig,
    skinny_config,
    skinny_linear,
)

L2_BYTES = 256 << 20  # several times an H200's 60 MB of L2: every call reads device memory


def shapes(spec) -> list[tuple[str, int, int]]:
    """(name, n, k) of each weight a dense decode step multiplies by."""
    d, h, kv, hid = spec.head_dim, spec.num_attention_heads, spec.num_kv_heads, spec.hidden_size
    return [("qkv", (h + 2 * kv) * d, hid), ("attn out", hid, h * d),
            ("gate/up", 2 * spec.intermediate_size, hid), ("down", hid, spec.intermediate_size),
            ("lm head", spec.vocab_size, hid)]


def per_call(fn, weights: list[torch.Tensor], x: torch.Tensor, runs: int) -> float:
    """Median seconds of one call of fn(x, w), w cycling through `weights`, in a CUDA graph."""
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        for w in weights[:2]:
            fn(x, w)  # compile / pick algorithms outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for w in weights:
            fn(x, w)
    graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(runs):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3 / len(weights))
    return statistics.median(times)


def sweep_configs(rows: int) -> list[SkinnyConfig]:
    block_ns = (2, 4, 8, 16) if rows == 1 else (16, 32, 64)
    block_ks = (256, 512, 1024) if rows == 1 else (64, 128, 256)
    return [SkinnyConfig(*c) for c in itertools.product(block_ns, block_ks, (4, 8), (3, 4))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="dense-1.5b-shape")
    ap.add_argument("--rows", default="1,2,4,8,16")
    ap.add_argument("--sweep", default="", metavar="ROWS",
                    help="at these row counts also the best of a grid of tilings, e.g. 1,8")
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--json")
    args = ap.parse_args()
    sweep = {int(r) for r in args.sweep.split(",") if r}
    spec = resolve_config(model_profile_name=args.model).model
    dtype = torch.bfloat16
    results = []
    print(f"{torch.cuda.get_device_name()}, {args.model}, bf16; us per call (GB/s of weight)")
    print(f"{'weight':9s} {'n x k':>13s} {'rows':>4s} {'cuBLAS':>16s} {'skinny':>16s} "
          f"{'ratio':>6s}  best of sweep")
    for name, n, k in shapes(spec):
        nbytes = n * k * 2
        copies = max(2, -(-L2_BYTES // nbytes))
        weights = [torch.randn(n, k, dtype=dtype, device="cuda") / k ** 0.5
                   for _ in range(copies)]
        for rows in (int(r) for r in args.rows.split(",")):
            x = torch.randn(rows, k, dtype=dtype, device="cuda")
            err = (skinny_linear(x, weights[0]).float() - F.linear(x, weights[0]).float()
                   ).abs().max().item()
            cublas = per_call(lambda x, w: F.linear(x, w), weights, x, args.runs)
            skinny = per_call(lambda x, w: skinny_linear(x, w), weights, x, args.runs)
            row = {"weight": name, "n": n, "k": k, "rows": rows, "cublas_s": cublas,
                   "skinny_s": skinny, "config": skinny_config(rows, n, k)._asdict(),
                   "max_abs_err": err}
            best = ""
            if rows in sweep:
                timed = [(per_call(lambda x, w, c=c: skinny_linear(x, w, config=c), weights,
                                   x, args.runs), c) for c in sweep_configs(rows)]
                t, c = min(timed)
                row["best_s"], row["best_config"] = t, c._asdict()
                best = f"{t * 1e6:7.1f} us {tuple(c)}"
            results.append(row)
            cell = [f"{t * 1e6:7.1f} ({nbytes / t / 1e9:5.0f})" for t in (cublas, skinny)]
            print(f"{name:9s} {n:>6d}x{k:<6d} {rows:4d} {cell[0]:>16s} {cell[1]:>16s} "
                  f"{cublas / skinny:6.2f}  {best}  err {err:.1e}")
        del weights
        torch.cuda.empty_cache()
    if args.json:
        Path(args.json).write_text(json.dumps({"device": torch.cuda.get_device_name(),
                                               "model": args.model, "results": results},
                                              indent=1))


if __name__ == "__main__":
    main()
