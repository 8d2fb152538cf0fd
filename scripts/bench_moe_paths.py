"""One MoE layer's two ways to run its experts, side by side on this machine: the sorted path
(model.sorted_experts: rows sorted by expert, each expert once on its run, one host sync)
and the sync-free paths (grouped_experts: gathered weights while the picks are under a third
of the experts, every expert under a dense routing matrix beyond), per model profile and
row count. Medians of --runs timings of --iters calls each; the ratio is sorted / sync-free
(above 1: sync-free is faster).

Usage: python scripts/bench_moe_paths.py [--profiles tiny-moe,small-moe] [--rows 1,8,32,128]
       [--device cpu|cuda] [--runs 5] [--iters 20]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from pypto_serving.core.loader import resolve_config
from pypto_serving.executor.grouped_experts import grouped_experts
from pypto_serving.executor.model import DTYPES, build_reference_model, route, sorted_experts


def timed(fn, runs: int, iters: int, device: torch.device) -> float:
    """Median seconds per call."""
    fn()
    samples = []
    for _ in range(runs):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(iters):
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        samples.append((time.perf_counter() - start) / iters)
    return statistics.median(samples)


@torch.inference_mode()
def compare(moe, rows: int, hidden: int, dtype: torch.dtype, device: torch.device,
            args: argparse.Namespace) -> tuple[float, float]:
    """(sorted, sync-free) median seconds of one layer's experts over `rows` rows."""
    x = torch.randn(rows, hidden, device=device, dtype=dtype)
    weights, ids = route(moe.gate, x, moe.top_k, moe.renormalize)
    return (timed(lambda: sorted_experts(x, weights, ids, moe.experts), args.runs, args.iters,
                  device),
            timed(lambda: grouped_experts(x, weights, ids, moe.stacked), args.runs, args.iters,
                  device))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profiles", default="tiny-moe,small-moe")
    ap.add_argument("--rows", default="1,8,32,128")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--iters", type=int, default=20)
    args = ap.parse_args()
    device = torch.device(args.device)
    print(f"{'profile':>16} {'rows':>5} {'sorted':>10} {'sync-free':>10} {'ratio':>6}")
    for name in args.profiles.split(","):
        # one layer is all it times (a 7B MoE shape's 16 would take minutes to draw)
        spec = resolve_config(model_profile_name=name).model.model_copy(update={"num_layers": 1})
        moe = build_reference_model(spec, seed=0).layers[0].ffn
        moe = moe.to(device=device, dtype=DTYPES[spec.dtype])
        for rows in (int(r) for r in args.rows.split(",")):
            a, b = compare(moe, rows, spec.hidden_size, DTYPES[spec.dtype], device, args)
            print(f"{name:>16} {rows:5d} {a * 1e3:8.3f}ms {b * 1e3:8.3f}ms {a / b:6.2f}")

if __name__ == "__main__":
    main()
