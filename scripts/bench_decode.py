"""Decode and prefill on one GPU against the physical limits, through the executor's runner.

In one run on the same device: (a) the copy bandwidth of a large device-to-device copy (bytes
read + written / time) and the dense bf16 matmul rate; (b) the runner's one-forward step
(`ReferenceModelRunner.run_step`, the step the engine drives) for decode at --batches with
--context tokens already in the paged KV cache, and the achieved fraction of the roofline:
(weight bytes + KV bytes read) / step time / copy bandwidth; (c) prefill throughput at
--prefill prompt lengths as a fraction of the matmul rate (2 x params FLOPs per token, the
attention FLOPs ignored). Weights are the reference model's seeded random ones in the model's
dtype; the KV cache is filled with random values (decode reads it whatever it holds).
Medians over --iters timed steps after warm-up, CUDA events.

Usage (on a GPU): python scripts/bench_decode.py [--model dense-1.5b-shape] [--batches 1,8,32,128]
       [--context 1024] [--prefill 512,2048,8192] [--iters 20] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from pypto_serving.core.loader import resolve_config  # noqa: E402
from pypto_serving.core.memory import kv_bytes_per_token, weight_bytes  # noqa: E402
from pypto_serving.engine.plan import SeqChunk  # noqa: E402
from pypto_serving.executor import distributed  # noqa: E402
from pypto_serving.executor.runner import ReferenceModelRunner  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def timed(fn, iters: int, warmup: int = 3) -> float:
    """Median seconds of `fn()` over `iters` calls, CUDA events around each."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def copy_bandwidth(nbytes: int = 4 << 30) -> float:
    src = torch.randn(nbytes // 2, dtype=torch.bfloat16, device="cuda")
    dst = torch.empty_like(src)
    t = timed(lambda: dst.copy_(src), 10)
    return 2 * nbytes / t


def matmul_rate(n: int = 8192) -> float:
    a = torch.randn(n, n, dtype=torch.bfloat16, device="cuda")
    b = torch.randn(n, n, dtype=torch.bfloat16, device="cuda")
    t = timed(lambda: a @ b, 10)
    return 2 * n ** 3 / t


def build(model: str, max_seq_len: int, num_blocks: int, block_size: int):
    cfg = resolve_config(model_profile_name=model, overrides={
        "model": {"dtype": "bfloat16", "max_seq_len": max_seq_len},
        "cluster": {"platform": "cuda"},
        "serve": {"kv_block_size": block_size}})
    path = Path(tempfile.mkdtemp()) / "config.json"
    path.write_text(cfg.model_dump_json())
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(_free_port()), PYPTO_CONFIG=str(path))
    ctx = distributed.init_distributed()
    runner = ReferenceModelRunner(ctx)
    runner.load_weights()
    cache = runner.init_kv_cache(num_blocks)
    cache.k.normal_()
    cache.v.normal_()
    return ctx, runner


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="dense-1.5b-shape")
    ap.add_argument("--batches", default="1,8,32,128")
    ap.add_argument("--context", type=int, default=1024)
    ap.add_argument("--prefill", default="512,2048,8192")
    ap.add_argument("--block-size", type=int, default=16)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--json")
    args = ap.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    prefills = [int(p) for p in args.prefill.split(",")]
    bs, ctx_len = args.block_size, args.context
    per_seq = ctx_len // bs + 1
    num_blocks = max(max(batches) * per_seq, max(prefills) // bs + 1)
    ctx, runner = build(args.model, max(ctx_len + 1, max(prefills)) + 1, num_blocks, bs)
    spec = ctx.model
    w_bytes = weight_bytes(ctx.rank_info, spec, expert_parallel=False)
    kv_tok = kv_bytes_per_token(ctx.rank_info, spec)
    # A step reads B embedding rows, not the table: the roofline counts every other weight.
    w_bytes -= len(ctx.rank_info.vocab) * spec.hidden_size * runner.kv_cache.k.element_size()
    bw, flops = copy_bandwidth(), matmul_rate()
    out = {"device": torch.cuda.get_device_name(), "model": args.model,
           "weight_bytes_read": w_bytes, "kv_bytes_per_token": kv_tok,
           "copy_bandwidth_Bps": bw, "matmul_flops": flops, "decode": [], "prefill": []}
    print(f"{out['device']}: copy {bw / 1e9:,.0f} GB/s, bf16 matmul {flops / 1e12:,.0f} TFLOP/s;"
          f" weights read per step {w_bytes / 1e9:.2f} GB, KV {kv_tok} B/token")
    for b in batches:
        chunks = [SeqChunk(seq_id=i, token_ids=[(7 * i) % spec.vocab_size], start_pos=ctx_len,
                           block_table=list(range(i * per_seq, (i + 1) * per_seq)), sample=True)
                  for i in range(b)]
        t = timed(lambda chunks=chunks: runner.run_step(chunks), args.iters)
        moved = w_bytes + b * (ctx_len + 1) * kv_tok
        frac = moved / t / bw
        out["decode"].append({"batch": b, "step_s": t, "bytes": moved, "roofline": frac})
        print(f"decode batch {b:4d} @ {ctx_len}: {t * 1e3:8.2f} ms/step, "
              f"{b / t:10,.0f} tok/s, roofline {frac:6.1%}")
    params = w_bytes / 2
    for n in prefills:
        chunk = [SeqChunk(seq_id=0, token_ids=[i % spec.vocab_size for i in range(n)],
                          start_pos=0, block_table=list(range(n // bs + 1)), sample=True)]
        try:
            t = timed(lambda chunk=chunk: runner.run_step(chunk), max(3, args.iters // 4))
        except torch.OutOfMemoryError as e:
            out["prefill"].append({"tokens": n, "error": "out of device memory"})
            print(f"prefill {n:5d} tokens: out of device memory ({str(e).splitlines()[0]})")
            torch.cuda.empty_cache()
            continue
        frac = 2 * params * n / t / flops
        out["prefill"].append({"tokens": n, "step_s": t, "tok_per_s": n / t, "matmul": frac})
        print(f"prefill {n:5d} tokens: {t * 1e3:8.2f} ms, {n / t:10,.0f} tok/s, "
              f"{frac:6.1%} of matmul rate")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    distributed.destroy_distributed()


if __name__ == "__main__":
    main()
