"""How many torch ops one eager forward step dispatches, a prefill burst of many short
prompts (each chunk's attention a loop of SDPA calls over its pages) next to one prompt of
the same length in all, on the CPU (where that loop is what runs): the host-side cost the
batched prefill kernel (triton_kernels.paged_prefill_attention, CUDA) replaces. Counted
under a TorchDispatchMode; also the median time of 5 steps.

Usage: python scripts/bench_step_ops.py [--layers 16] [--burst 16x128]
"""

from __future__ import annotations

import argparse
import collections
import statistics
import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from pypto_serving.core.config import ModelSpec
from pypto_serving.executor.batch import StepChunk, build_step
from pypto_serving.executor.kv_cache import PagedKVCache
from pypto_serving.executor.model import build_reference_model


class OpCount(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[func._overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--burst", default="16x128", metavar="NxL")
    args = ap.parse_args()
    n, length = (int(x) for x in args.burst.split("x"))
    bs = 16
    # tiny widths: the op count, not the arithmetic, is what this measures
    spec = ModelSpec(name="ops", num_layers=args.layers, hidden_size=64, num_attention_heads=8,
                     num_kv_heads=2, intermediate_size=128, num_experts=0, vocab_size=256,
                     max_seq_len=4 * n * length)
    model = build_reference_model(spec, seed=0)
    need = -(-length // bs)
    cache = PagedKVCache(range(args.layers), num_blocks=n * need + -(-n * length // bs),
                         block_size=bs, num_kv_heads=2, head_dim=spec.head_dim)
    tokens = [i % spec.vocab_size for i in range(length)]
    burst = [StepChunk(tokens, 0, list(range(i * need, (i + 1) * need))) for i in range(n)]
    one = [StepChunk([i % spec.vocab_size for i in range(n * length)], 0,
                     list(range(n * need, n * need + -(-n * length // bs))))]
    print(f"{'step':>18} {'ops':>7} {'SDPA calls':>10} {'ms':>8}")
    with torch.inference_mode():
        for name, chunks in ((f"{n} x {length} tokens", burst), (f"1 x {n * length}", one)):
            step = build_step(chunks, bs, torch.device("cpu"))
            model(step.tokens, step.meta, cache)
            with OpCount() as count:
                model(step.tokens, step.meta, cache)
            times = []
            for _ in range(5):
                start = time.perf_counter()
                model(step.tokens, step.meta, cache)
                times.append(time.perf_counter() - start)
            print(f"{name:>18} {sum(count.ops.values()):7d} "
                  f"{count.ops['scaled_dot_product_attention']:10d} "
                  f"{statistics.median(times) * 1e3:8.1f}")


if __name__ == "__main__":
    main()
