"""A batch-1 decode step's linear layers on one GPU: cuBLAS (F.linear) against the GEMV
kernels (executor/gemv.py), weight by weight, in one run.

For each weight of the profile (fused QKV, attention output, fused gate/up, down, LM head):
the time of one call at one row and the bandwidth it reaches (weight bytes / time), by
cuBLAS and by the GEMV kernel; and for the steps the kernels fold in, the pair of launches
they replace against the one fused launch: add + RMSNorm then QKV or gate/up
(ops.norm_linear), SiLU-and-mul then down (ops.silu_mul_linear). With --sweep, the GEMV's
time at a grid of tilings (BLOCK_N, BLOCK_K). Calls run inside a CUDA graph (as in a decode
step) over enough copies of the weight to exceed the L2 cache, so each reads its weight from
device memory; medians of --runs replays.

Usage (on a GPU): python scripts/bench_linear.py [--model dense-1.5b-shape] [--sweep]
       [--runs 7] [--json FILE]
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
from pypto_serving.executor import ops, triton_kernels  # noqa: E402
from pypto_serving.executor.gemv import gemv, norm_gemv, silu_mul_gemv  # noqa: E402

L2_BYTES = 256 << 20  # several times an H200's 60 MB of L2: every call reads device memory


def shapes(spec) -> list[tuple[str, int, int, str]]:
    """(name, n, k, the step folded into its kernel) of each weight a dense step multiplies."""
    d, h, kv, hid = spec.head_dim, spec.num_attention_heads, spec.num_kv_heads, spec.hidden_size
    return [("qkv", (h + 2 * kv) * d, hid, "norm"), ("attn out", hid, h * d, ""),
            ("gate/up", 2 * spec.intermediate_size, hid, "norm"),
            ("down", hid, spec.intermediate_size, "silu_mul"),
            ("lm head", spec.vocab_size, hid, "")]


def per_call(fn, weights: list[torch.Tensor], runs: int) -> float:
    """Median seconds of one call of fn(w), w cycling through `weights`, in a CUDA graph."""
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        for w in weights[:2]:
            fn(w)  # compile outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for w in weights:
            fn(w)
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


def fused_pair(fold: str, k: int, dtype: torch.dtype):
    """(separate launches, one fused launch) as functions of the weight, for `fold`."""
    if fold == "silu_mul":
        gu = torch.randn(1, 2 * k, dtype=dtype, device="cuda")
        return (lambda w: F.linear(triton_kernels.silu_mul(gu), w),
                lambda w: silu_mul_gemv(gu, w))
    h, r = (torch.randn(1, k, dtype=dtype, device="cuda") for _ in range(2))
    g = torch.randn(k, dtype=dtype, device="cuda")

    def separate(w):
        x, _ = triton_kernels.rms_norm(h, g, 1e-5, r)
        return F.linear(x, w)
    return separate, lambda w: norm_gemv(h, r, g, 1e-5, w)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="dense-1.5b-shape")
    ap.add_argument("--sweep", action="store_true", help="also the GEMV at a grid of tilings")
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--json")
    args = ap.parse_args()
    spec = resolve_config(model_profile_name=args.model).model
    dtype = torch.bfloat16
    results = []
    print(f"{torch.cuda.get_device_name()}, {args.model}, bf16, one row; us per call "
          f"(GB/s of weight)")
    print(f"{'weight':9s} {'n x k':>13s} {'cuBLAS':>15s} {'GEMV':>15s} {'ratio':>6s}   "
          f"{'folded step':12s} {'2 launches':>10s} {'fused':>7s} {'ratio':>6s}")
    for name, n, k, fold in shapes(spec):
        nbytes = n * k * 2
        copies = max(2, -(-L2_BYTES // nbytes))
        weights = [torch.randn(n, k, dtype=dtype, device="cuda") / k ** 0.5
                   for _ in range(copies)]
        x = torch.randn(1, k, dtype=dtype, device="cuda")
        with ops.graph_kernels():
            err = (ops.linear(x, weights[0]).float() - F.linear(x, weights[0]).float()
                   ).abs().max().item()
        cublas = per_call(lambda w, x=x: F.linear(x, w), weights, args.runs)
        mine = per_call(lambda w, x=x: gemv(x, w), weights, args.runs)
        row = {"weight": name, "n": n, "k": k, "cublas_s": cublas, "gemv_s": mine,
               "max_abs_err": err}
        cells = [f"{t * 1e6:6.1f} ({nbytes / t / 1e9:5.0f})" for t in (cublas, mine)]
        line = f"{name:9s} {n:>6d}x{k:<6d} {cells[0]:>15s} {cells[1]:>15s} {cublas / mine:6.2f}"
        if fold:
            two, one = (per_call(fn, weights, args.runs) for fn in fused_pair(fold, k, dtype))
            row.update(fold=fold, separate_s=two, fused_s=one)
            line += f"   {fold:12s} {two * 1e6:8.1f}us {one * 1e6:5.1f}us {two / one:6.2f}"
        if args.sweep:
            row["sweep"] = [{"block_n": bn, "block_k": bk, "s": per_call(
                lambda w, x=x, t=(bn, bk): gemv(x, w, tiling=t), weights, args.runs)}
                for bn, bk in itertools.product((2, 4, 8, 16), (256, 512, 1024))]
            best = min(row["sweep"], key=lambda c: c["s"])
            line += f"   best ({best['block_n']}, {best['block_k']}) {best['s'] * 1e6:.1f}us"
        results.append(row)
        print(line + f"   err {err:.1e}")
        del weights
        torch.cuda.empty_cache()
    if args.json:
        Path(args.json).write_text(json.dumps({"device": torch.cuda.get_device_name(),
                                               "model": args.model, "results": results},
                                              indent=1))


if __name__ == "__main__":
    main()
