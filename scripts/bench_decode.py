"""Decode and prefill on one GPU against the physical limits, through the executor's runner.

In one run on the same device: (a) the copy bandwidth of a large device-to-device copy (bytes
read + written / time) and the dense bf16 matmul rate; (b) the runner's one-forward step
(`ReferenceModelRunner.run_step`, the step the engine drives, host work and sampling
included) for decode at --batches with --context tokens already in the paged KV cache, once
eagerly and once replayed from the runner's CUDA graphs (`warmup()` captures them), and the
achieved fraction of the roofline: (weight bytes + KV bytes read) / step time / copy
bandwidth; mode graphs-nopdl recaptures the graphs without programmatic dependent launch
(each kernel waits for the one before to end), graphs-cublas also with every linear layer on
cuBLAS (the baseline of the GEMV kernels, executor/gemv.py); (c) prefill throughput at
--prefill prompt lengths as a fraction of the matmul rate (2 x params FLOPs per token, the
attention FLOPs ignored), and a --burst step of many short prompts with all chunks'
attention in one launch against the loop of SDPA calls per chunk. With --accuracy, (d) the
bf16 model against the same weights in fp32 over a prefill and --accuracy decode steps: the max
logit error and the greedy-token agreement (teacher-forced by the fp32 tokens), and the
first step where free-running bf16 greedy decoding departs from fp32's.

Weights are the reference model's seeded random ones; the KV cache is filled with random
values (decode reads it whatever it holds). Medians over --iters timed steps after warm-up,
CUDA events. `PYPTO_KERNELS=torch` in the environment times torch's own ops instead of the
Triton kernels (the eager baseline before them).

Usage (on a GPU): python scripts/bench_decode.py [--model dense-1.5b-shape] [--batches 1,8,32,128]
       [--context 1024] [--prefill 512,2048,8192]
       [--modes eager,graphs,graphs-nopdl,graphs-cublas]
       [--iters 20] [--burst 16x128] [--accuracy 32] [--profile] [--json FILE]
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from pypto_serving.core.loader import resolve_config  # noqa: E402
from pypto_serving.core.memory import kv_bytes_per_token, weight_bytes  # noqa: E402
from pypto_serving.engine.plan import SeqChunk  # noqa: E402
from pypto_serving.executor import distributed  # noqa: E402
from pypto_serving.executor.batch import build_step  # noqa: E402
from pypto_serving.executor.decode_graphs import DecodeGraphs  # noqa: E402
from pypto_serving.executor.ops import GraphKernels  # noqa: E402
from pypto_serving.executor.runner import ReferenceModelRunner  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


BASELINE_GRAPHS = {"graphs-nopdl": GraphKernels(gemv=True, pdl=False),
                   "graphs-cublas": GraphKernels(gemv=False, pdl=False)}


def timed(fn, iters: int, warmup: int = 3, warmup_s: float = 1.0) -> float:
    """Median seconds of `fn()` over `iters` calls, CUDA events around each, after at least
    `warmup` calls and `warmup_s` seconds of them: on the H200 machine a batch-1 step's host
    work took ~170 us for its first ~150 steps and ~88 us after, as in steady serving."""
    end = time.perf_counter() + warmup_s
    for i in itertools.count():
        if i >= warmup and time.perf_counter() >= end:
            break
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


def build(model: str, max_seq_len: int, num_blocks: int, block_size: int, max_batch: int):
    cfg = resolve_config(model_profile_name=model, overrides={
        "model": {"dtype": "bfloat16", "max_seq_len": max_seq_len},
        "cluster": {"platform": "cuda"},
        "serve": {"kv_block_size": block_size, "max_num_seqs": max_batch}})
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
    runner.warmup()  # captures the decode graphs where the runner supports them
    return ctx, runner


def weights_read(w_bytes: int, spec, batch: int, elem: int) -> float:
    """Weight bytes a step of `batch` tokens reads: all of a dense model's; for a MoE, the
    dense part plus the experts its tokens touch, expected under uniform top-k routing
    (num_experts x (1 - (1 - k / num_experts) ^ batch) per layer)."""
    if not spec.is_moe:
        return w_bytes
    expert = 3 * spec.hidden_size * spec.intermediate_size * elem * spec.num_layers
    touched = spec.num_experts * (1 - (1 - spec.experts_per_token / spec.num_experts) ** batch)
    return w_bytes - spec.num_experts * expert + touched * expert


def profile_step(runner: ReferenceModelRunner, chunks: list, steps: int = 10) -> dict:
    """GPU kernel time per step by kernel name over `steps` steps, against the wall time:
    the difference is time the GPU waited (launch gaps, host work)."""
    from torch.profiler import ProfilerActivity, profile
    for _ in range(3):
        runner.run_step(chunks)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(steps):
            runner.run_step(chunks)
        end.record()
        end.synchronize()
    kernels: dict[str, list[float]] = {}
    for e in prof.events():
        if e.device_type.name == "CUDA" and e.device_time_total > 0:
            kernels.setdefault(e.name[:60], []).append(e.device_time_total / steps)
    rows = sorted(((sum(v), len(v) // steps, k) for k, v in kernels.items()), reverse=True)
    busy = sum(r[0] for r in rows)
    wall = start.elapsed_time(end) * 1e3 / steps
    # the graph alone, replayed back to back: the step less its host work and sampling
    graph = runner.graphs.graphs[min(runner.graphs.graphs)] if runner.graphs else None
    replay = timed(graph.replay, 50) * 1e6 if graph is not None else None
    print(f"profile: {wall:.0f} us per step, GPU kernels busy {busy:.0f} us "
          f"({busy / wall:.0%}; kernels that overlap under PDL count twice); the graph "
          f"replayed alone: {replay or 0:.0f} us; top kernels (us per step, launches per step):")
    for us, count, name in rows[:16]:
        print(f"  {us:8.1f} us  x{count:<4d} {name}")
    return {"wall_us": wall, "busy_us": busy, "graph_replay_us": replay,
            "kernels": [{"us": us, "per_step": n, "name": k} for us, n, k in rows]}


@torch.inference_mode()
def burst(runner: ReferenceModelRunner, n: int, length: int, blocks: int, iters: int) -> dict:
    """A prefill step of n chunks of `length` tokens through the model (embedding, layers, LM
    head of the last rows), with its prefill tables (one kernel launch per layer for every
    chunk) and without (SDPA per chunk): ms each and the ratio."""
    vocab = runner.ctx.model.vocab_size
    chunks = [SeqChunk(seq_id=i, token_ids=[(i + t) % vocab for t in range(length)],
                       start_pos=0, block_table=list(range(i * blocks, (i + 1) * blocks)),
                       sample=True) for i in range(n)]
    step = build_step(chunks, runner.kv_cache.block_size, runner.ctx.device)
    model, cache = runner.model, runner.kv_cache
    res = {"chunks": n, "tokens": length}
    for name, meta in (("one_launch", step.meta),
                       ("sdpa_loop", dataclasses.replace(step.meta, prefill_tables=None))):
        res[f"{name}_s"] = timed(lambda meta=meta: model.head(
            model.run_layers(model.embed(step.tokens), meta, cache)[step.last_rows]), iters)
    res["speedup"] = res["sdpa_loop_s"] / res["one_launch_s"]
    print(f"prefill burst {n} x {length} tokens: one launch {res['one_launch_s'] * 1e3:.2f} ms,"
          f" SDPA loop {res['sdpa_loop_s'] * 1e3:.2f} ms ({res['speedup']:.2f}x)")
    return res


def accuracy(runner: ReferenceModelRunner, steps: int, prompt_len: int = 64) -> dict:
    """bf16 (the runner) against the same seeded weights in fp32: max logit error per step
    and greedy agreement, teacher-forced by fp32's tokens; then free-running bf16 greedy
    tokens against fp32's, the first step where they part."""
    ctx = runner.ctx
    fp32 = ctx.config.model_copy(update={"model": ctx.model.model_copy(
        update={"dtype": "float32"})})
    ref = ReferenceModelRunner(dataclasses.replace(ctx, config=fp32))
    ref.load_weights()
    bs = ctx.kv_block_size
    blocks = (prompt_len + steps) // bs + 1
    ref.init_kv_cache(blocks)
    prompt = [(31 * i + 7) % ctx.model.vocab_size for i in range(prompt_len)]
    table = list(range(blocks))

    def step(r, tokens, start):
        chunk = [SeqChunk(seq_id=0, token_ids=tokens, start_pos=start, block_table=table,
                          sample=True)]
        out = r.run_step(chunk)
        return out.logits[0].float(), out.next_tokens[0]

    errors, agree, tokens, pos = [], 0, prompt, 0
    for _ in range(steps + 1):  # the prefill, then `steps` decodes, both fed fp32's tokens
        want, want_tok = step(ref, tokens, pos)
        got, got_tok = step(runner, tokens, pos)
        errors.append(((got - want).abs().max() / want.abs().max()).item())
        agree += got_tok == want_tok
        pos += len(tokens)
        tokens = [want_tok]
    free = {}
    for name, r in (("fp32", ref), ("bf16", runner)):
        tokens, pos, seq = prompt, 0, []
        for _ in range(steps + 1):
            _, tok = step(r, tokens, pos)
            seq.append(tok)
            pos += len(tokens)
            tokens = [tok]
        free[name] = seq
    parted = next((i for i, (a, b) in enumerate(zip(free["fp32"], free["bf16"], strict=True))
                   if a != b), None)
    return {"prompt_tokens": prompt_len, "decode_steps": steps,
            "max_rel_logit_err": max(errors), "rel_logit_err_per_step": errors,
            "teacher_forced_agreement": agree / (steps + 1),
            "free_running_first_difference": parted}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="dense-1.5b-shape")
    ap.add_argument("--batches", default="1,8,32,128")
    ap.add_argument("--context", type=int, default=1024)
    ap.add_argument("--prefill", default="512,2048,8192")
    ap.add_argument("--block-size", type=int, default=16)
    ap.add_argument("--modes", default="eager,graphs,graphs-nopdl,graphs-cublas")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--burst", default="16x128", metavar="NxL",
                    help="also a prefill step of N chunks of L tokens (a burst of new "
                         "requests), all chunks in one Triton launch per layer vs the loop "
                         "of SDPA calls per chunk, in one run")
    ap.add_argument("--accuracy", type=int, default=0, metavar="STEPS")
    ap.add_argument("--profile", action="store_true",
                    help="also list the GPU kernels of a batch-1 decode step (torch.profiler)")
    ap.add_argument("--json")
    args = ap.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    prefills = [int(p) for p in args.prefill.split(",")]
    bs, ctx_len = args.block_size, args.context
    per_seq = ctx_len // bs + 1
    burst_n, burst_len = (int(x) for x in args.burst.split("x"))
    burst_blocks = -(-burst_len // bs)
    num_blocks = max(max(batches) * per_seq, max(prefills) // bs + 1, burst_n * burst_blocks)
    ctx, runner = build(args.model, max(ctx_len + 1, max(prefills)) + 1, num_blocks, bs,
                        max(batches))
    graphs = runner.graphs
    spec = ctx.model
    w_bytes = weight_bytes(ctx.rank_info, spec, expert_parallel=False)
    kv_tok = kv_bytes_per_token(ctx.rank_info, spec)
    # A step reads B embedding rows, not the table: the roofline counts every other weight.
    elem = runner.kv_cache.k.element_size()
    w_bytes -= len(ctx.rank_info.vocab) * spec.hidden_size * elem
    bw, flops = copy_bandwidth(), matmul_rate()
    out = {"device": torch.cuda.get_device_name(), "model": args.model,
           "weight_bytes_read": w_bytes, "kv_bytes_per_token": kv_tok,
           "copy_bandwidth_Bps": bw, "matmul_flops": flops,
           "kernels": os.environ.get("PYPTO_KERNELS", "triton"),
           "graphs": {"buckets": graphs.buckets, "capture_s": graphs.capture_s}
           if graphs else {"eager_reason": runner.eager_reason}, "decode": [], "prefill": []}
    print(f"{out['device']}: copy {bw / 1e9:,.0f} GB/s, bf16 matmul {flops / 1e12:,.0f} TFLOP/s;"
          f" weights read per step {w_bytes / 1e9:.2f} GB, KV {kv_tok} B/token; "
          f"kernels {out['kernels']}; graphs {out['graphs']}")
    for mode in args.modes.split(","):
        if mode.startswith("graphs") and graphs is None:
            print(f"decode graphs: not captured ({runner.eager_reason})")
            continue
        runner.graphs = graphs if mode == "graphs" else None
        if mode in BASELINE_GRAPHS:  # the same graphs, without PDL (and GEMVs)
            runner.graphs = DecodeGraphs(runner.model, runner.kv_cache, graphs.buckets[-1],
                                         spec.max_seq_len, BASELINE_GRAPHS[mode])
            runner.graphs.capture()
        for b in batches:
            chunks = [SeqChunk(seq_id=i, token_ids=[(7 * i) % spec.vocab_size],
                               start_pos=ctx_len, sample=True,
                               block_table=list(range(i * per_seq, (i + 1) * per_seq)))
                      for i in range(b)]
            t = timed(lambda chunks=chunks: runner.run_step(chunks), args.iters)
            moved = weights_read(w_bytes, spec, b, elem) + b * (ctx_len + 1) * kv_tok
            frac = moved / t / bw
            out["decode"].append({"mode": mode, "batch": b, "step_s": t, "bytes": moved,
                                  "roofline": frac})
            print(f"decode {mode:6s} batch {b:4d} @ {ctx_len}: {t * 1e3:8.3f} ms/step, "
                  f"{b / t:10,.0f} tok/s, roofline {frac:6.1%}")
    runner.graphs = graphs
    if args.profile:
        out["profile"] = profile_step(runner, [SeqChunk(seq_id=0, token_ids=[1], start_pos=ctx_len,
                                                        block_table=list(range(per_seq)),
                                                        sample=True)])
    params = weights_read(w_bytes, spec, 1, elem) / elem  # active parameters per token
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
    out["burst"] = burst(runner, burst_n, burst_len, burst_blocks, max(3, args.iters // 4))
    if args.accuracy:
        out["accuracy"] = acc = accuracy(runner, args.accuracy)
        print(f"bf16 vs fp32 over a {acc['prompt_tokens']}-token prefill + {args.accuracy} "
              f"decodes: max relative logit error {acc['max_rel_logit_err']:.2e}, "
              f"teacher-forced greedy agreement {acc['teacher_forced_agreement']:.1%}, "
              f"free-running tokens first differ at step "
              f"{acc['free_running_first_difference']}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    distributed.destroy_distributed()


if __name__ == "__main__":
    main()
