"""Each Triton kernel against its torch version: `python kernel_check.py [cpu|cuda]`, on the
CPU under TRITON_INTERPRET=1 (Triton's interpreter), or on a GPU.

Prints one JSON line per case: its name and the max abs error."""

from __future__ import annotations

import json
import sys

import torch

from pypto_serving.executor import gemv, ops, triton_kernels
from pypto_serving.executor.attention import (
    PrefillSpan,
    gathered_decode_attention,
    prefill_attention,
)
from pypto_serving.executor.batch import prefill_tables
from pypto_serving.executor.kv_cache import LayerCache


def decode_cases(device: str):
    gen = torch.Generator().manual_seed(0)
    for heads, kv_heads, d, block_size, lens, dtype in [
        (4, 2, 16, 4, [1, 5, 16, 17, 40], torch.float32),
        (6, 2, 8, 8, [3, 9], torch.float32),       # 3 query heads per KV head
        (4, 4, 32, 16, [1, 33], torch.float32),    # no grouping
        # bf16 on a GPU; fp16 in the interpreter, whose tl.dot mishandles bf16 (numpy has none)
        (8, 2, 64, 16, [70, 2], torch.bfloat16 if device == "cuda" else torch.float16),
        (2, 1, 16, 16, [3000], torch.float32),     # 47 tiles over 32 splits: two in some
    ]:
        blocks = sum(-(-n // block_size) for n in lens) + 3
        shape = (blocks, block_size, kv_heads, d)
        k = torch.randn(shape, generator=gen).to(dtype)
        v = torch.randn(shape, generator=gen).to(dtype)
        perm = torch.randperm(blocks, generator=gen).tolist()
        width = max(-(-n // block_size) for n in lens) + 1
        tables, used = [], 0
        for n in lens:
            need = -(-n // block_size)
            row = perm[used:used + need]
            used += need
            tables.append(row + [row[0]] * (width - need))
        tables = torch.tensor(tables, dtype=torch.int32)
        ctx = torch.tensor(lens, dtype=torch.long)
        # q as the strided view the model passes: a slice of a wider row
        q = torch.randn(len(lens), heads + 3, d, generator=gen).to(dtype)[:, :heads]
        q, k, v, tables, ctx = (t.to(device) for t in (q, k, v, tables, ctx))
        got = triton_kernels.paged_decode_attention(q, k, v, tables, ctx)
        want = gathered_decode_attention(q, k, v, tables, ctx)
        yield f"decode h{heads} kv{kv_heads} d{d} bs{block_size} {dtype}", got, want


def prefill_cases(device: str):
    """Several chunks of one step in one launch, against SDPA per chunk: chunks that start
    at 0 and past it (a cached prefix), longer than a program's queries, in shuffled
    blocks, between decode rows (which the kernel must leave alone)."""
    gen = torch.Generator().manual_seed(2)
    for heads, kv_heads, d, block_size, chunks, dtype in [
        (4, 2, 16, 4, [(5, 0), (17, 3), (70, 0)], torch.float32),
        (6, 2, 8, 8, [(2, 9), (65, 0)], torch.float32),   # a group of 3; d padded to 16
        (4, 4, 32, 16, [(33, 0), (2, 40)], torch.float32),
        (8, 2, 64, 16, [(70, 2), (3, 30)], torch.bfloat16 if device == "cuda"
         else torch.float16),
    ]:
        need = [-(-(n + start) // block_size) for n, start in chunks]
        blocks = sum(need) + 2
        shape = (blocks, block_size, kv_heads, d)
        k = torch.randn(shape, generator=gen).to(dtype)
        v = torch.randn(shape, generator=gen).to(dtype)
        perm = torch.randperm(blocks, generator=gen).tolist()
        spans, flat, row = [], [], 1  # row 0 and one row between chunks: decodes
        for (n, start), want_blocks in zip(chunks, need, strict=True):
            spans.append((row, n, start, len(flat), len(flat) + want_blocks))
            flat += perm[len(flat):len(flat) + want_blocks]
            row += n + 1
        q = torch.randn(row, heads + 3, d, generator=gen).to(dtype)[:, :heads]
        q, k, v = (t.to(device) for t in (q, k, v))
        tables = prefill_tables(spans, flat, torch.device(device))
        got = torch.zeros_like(q)
        triton_kernels.paged_prefill_attention(q, k, v, got, tables.info, tables.tables,
                                               tables.work)
        want = torch.zeros_like(q)
        dev_flat = torch.tensor(flat, device=device)
        for r, n, start, a, b in spans:
            span = PrefillSpan(r, n, start, dev_flat[a:b])
            want[r:r + n] = prefill_attention(q[r:r + n], k, v, span)
        yield f"prefill h{heads} kv{kv_heads} d{d} bs{block_size} {dtype}", got, want


def elementwise_cases(device: str):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(5, 48, generator=gen).to(device)
    w = torch.randn(48, generator=gen).to(device)
    yield "rms_norm", triton_kernels.rms_norm(x, w, 1e-6), _torch(ops.rms_norm, x, w, 1e-6)
    r = torch.randn(5, 48, generator=gen).to(device)
    got, want = triton_kernels.rms_norm(x, w, 1e-6, r), _torch(ops.rms_norm, x, w, 1e-6, r)
    yield "add_rms_norm", torch.cat(got), torch.cat(want)
    qk = torch.randn(5, 7, 16, generator=gen).to(device)
    pos = torch.tensor([0, 3, 9, 1, 30], device=device)
    angles = torch.outer(torch.arange(32.0), torch.rand(8, generator=gen))
    cos, sin = angles.cos().to(device), angles.sin().to(device)
    want = _torch(ops.rotary, qk.clone(), pos, cos, sin)
    yield "rotary", triton_kernels.rotary_(qk.clone(), pos, cos, sin), want
    yield "rotary_into_cache", *rotary_into_cache_case(device, gen, cos, sin)
    y = torch.randn(3, 2 * 1500, generator=gen).to(device)
    yield "silu_mul", triton_kernels.silu_mul(y), _torch(ops.silu_mul, y)


def gemv_cases(device: str):
    """The GEMV kernels against their torch versions: plain (widths that end inside a tile,
    with and without a bias, x a strided view), with SiLU-and-mul folded in, with RMSNorm and
    with the residual add + RMSNorm folded in (the residual sum too). Weights scaled to
    outputs of ~1, so one 16-bit rounding of each side agrees."""
    gen = torch.Generator().manual_seed(3)
    dtype = torch.bfloat16 if device == "cuda" else torch.float16  # the interpreter: no bf16

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen) * scale).to(dtype)

    def on(*ts):
        return [t.to(device) if t is not None else None for t in ts]

    for n, k, bias in [(37, 200, False), (64, 1024, True), (5, 2500, False)]:
        x, w = rand(2, k + 5)[:1, :k], rand(n, k, scale=k ** -0.5)
        b = rand(n) if bias else None
        yield (f"gemv {k} -> {n}{' + bias' if bias else ''} {dtype}", gemv.gemv(*on(x, w, b)),
               _torch(torch.nn.functional.linear, x, w, b))
    k, n = 300, 24
    gu, w = rand(1, 2 * k), rand(n, k, scale=k ** -0.5)
    want = torch.nn.functional.linear(ops.silu_mul(gu), w)
    yield f"silu_mul_gemv {k} -> {n} {dtype}", gemv.silu_mul_gemv(*on(gu, w)), want
    h, r, g, w = rand(1, k), rand(1, k), rand(k), rand(n, k, scale=k ** -0.5)
    want = torch.nn.functional.linear(ops.rms_norm(h, g, 1e-5), w)
    got, same = gemv.norm_gemv(*on(h, None, g), 1e-5, *on(w))
    yield f"norm_gemv {k} -> {n} {dtype}", torch.cat([got.cpu(), same.cpu()], 1), \
        torch.cat([want, h], 1)
    normed, total = ops.rms_norm(h, g, 1e-5, r)
    got, got_total = gemv.norm_gemv(*on(h, r, g), 1e-5, *on(w))
    yield f"add_norm_gemv {k} -> {n} {dtype}", torch.cat([got.cpu(), got_total.cpu()], 1), \
        torch.cat([torch.nn.functional.linear(normed, w), total], 1)


def folded_output_cases(device: str):
    """The GEMVs with the step after them folded in, against the unfused torch steps: QKV
    with rotary and the cache write (after add + RMSNorm, after RMSNorm, and plain, with a
    bias), and the residual add + RMSNorm after a GEMV with a bias (the normalised row and
    the stream, over 150 programs, the last of which normalises)."""
    gen = torch.Generator().manual_seed(6)
    dtype = torch.bfloat16 if device == "cuda" else torch.float16
    heads, kv_heads, d, k = 3, 2, 16, 96
    n = (heads + 2 * kv_heads) * d

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen) * scale).to(dtype)

    angles = torch.outer(torch.arange(32.0), torch.rand(d // 2, generator=gen))
    cos, sin = angles.cos(), angles.sin()
    pos, slots = torch.tensor([13]), torch.tensor([9])
    x, r, g, b = rand(1, k), rand(1, k), rand(k), rand(n)
    w = rand(n, k, scale=k ** -0.5)
    for name, res, norm in [("add_norm", r, g), ("norm", None, g), ("plain", None, None)]:
        results = []
        for on in (device, "torch"):
            cache = LayerCache(torch.zeros(4, 4, kv_heads, d, dtype=dtype),
                               torch.zeros(4, 4, kv_heads, d, dtype=dtype))
            if on == "torch":
                qkv, total = (ops.norm_linear(x, res, norm, 1e-5, w, b) if norm is not None
                              else (torch.nn.functional.linear(x, w, b), x))
                q = ops.rotary_into_cache(qkv.view(1, -1, d), heads, kv_heads, pos, slots,
                                          cos, sin, cache)
            else:
                cache = LayerCache(cache.k.to(device), cache.v.to(device))
                q, total = gemv.qkv_gemv_into_cache(
                    *(t.to(device) if t is not None else None for t in (x, res, norm)), 1e-5,
                    w.to(device), b.to(device), heads, kv_heads, pos.to(device),
                    slots.to(device), cos.to(device), sin.to(device), *cache.flat())
            results.append(torch.cat([q.flatten().cpu(), total.flatten().cpu(),
                                      cache.k.flatten().cpu(), cache.v.flatten().cpu()]))
        yield f"qkv_gemv_into_cache {name} {k} -> {n} {dtype}", *results
    n, k = 300, 200
    x, w, b = rand(1, k), rand(n, k, scale=k ** -0.5), rand(n)
    r, g = rand(1, n), rand(n)
    want = torch.cat(ops.rms_norm(torch.nn.functional.linear(x, w, b), g, 1e-5, r), 1)
    got = gemv.gemv_add_norm(*(t.to(device) for t in (x, w, b, r, g)), 1e-5)
    yield f"gemv_add_norm {k} -> {n} {dtype}", torch.cat([t.cpu() for t in got], 1), want
    # SwiGLU's down projection with the final norm: silu_mul of x [1, 2k] first, no bias
    x = rand(1, 2 * k)
    want = torch.cat(ops.rms_norm(torch.nn.functional.linear(ops.silu_mul(x), w), g, 1e-5, r),
                     1)
    got = gemv.gemv_add_norm(*(t.to(device) for t in (x, w)), None,
                             *(t.to(device) for t in (r, g)), 1e-5, silu_mul_input=True)
    yield (f"gemv_add_norm silu_mul {2 * k} -> {n} {dtype}",
           torch.cat([t.cpu() for t in got], 1), want)


def argmax_cases(device: str):
    """The argmax (with the fp32 copy of its input) against torch's: a tie (the first index
    wins), a row of -inf, a maximum in a later program's columns, NaNs (the first wins), and
    one 16-bit row of the dense shape's vocabulary with a tie across programs."""
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(5, 10000, generator=gen)
    x[1, 100] = x[1, 9000] = 9.0
    x[2] = float("-inf")
    x[3, 4 * 2048 + 5] = 50.0
    x[4, 3000] = x[4, 7000] = float("nan")
    logits, tokens = triton_kernels.float_argmax(x.to(device))
    yield "argmax float32", tokens, x.argmax(-1)
    wide = torch.randn(1, 128256, generator=gen)
    wide[0, 7] = wide[0, 128255] = 8.0
    wide = wide.to(torch.bfloat16 if device == "cuda" else torch.float16)
    logits, tokens = triton_kernels.float_argmax(wide.to(device))
    yield "argmax 128256 16-bit", tokens, wide.argmax(-1)
    yield "argmax 128256 16-bit: its logits in fp32", logits, wide.float()


def pdl_chain_case(device: str):
    """On a GPU: add + RMSNorm, a GEMV and the argmax chained by programmatic dependent
    launch, each reading the one before's output, against the same chain launched plainly
    (equal to the bit: only the launches differ)."""
    gen = torch.Generator().manual_seed(5)
    h, r, g = (torch.randn(1, 2048, generator=gen).to(device, torch.bfloat16) for _ in "hrg")
    w = (torch.randn(16384, 2048, generator=gen) / 45).to(device, torch.bfloat16)
    runs = []
    for pdl in (True, False):
        normed, total = triton_kernels.rms_norm(h, g[0], 1e-5, r, pdl=pdl)
        y = gemv.gemv(normed, w, pdl=pdl)
        runs.append(torch.cat([normed.float(), total.float(), y.float(),
                               triton_kernels.float_argmax(y, pdl=pdl)[1][None].float()], 1))
    yield "pdl chain (rms_norm, gemv, argmax)", runs[0], runs[1]


def rotary_into_cache_case(device: str, gen: torch.Generator, cos: torch.Tensor,
                           sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """4 tokens of 3 query + 2 KV heads into a cache of 6 blocks x 4 slots: the rotated
    queries and the whole cache afterwards, by the kernel and by torch."""
    qkv = torch.randn(4, 3 + 2 * 2, 16, generator=gen).to(device)
    pos = torch.tensor([0, 5, 6, 13], device=device)
    slots = torch.tensor([2, 21, 22, 9], device=device)
    results = []
    for version in ("triton", "torch"):
        cache = LayerCache(torch.zeros(6, 4, 2, 16, device=device),
                           torch.zeros(6, 4, 2, 16, device=device))
        x = qkv.clone()
        if version == "triton":
            triton_kernels.rotary_into_cache(x, 3, 2, pos, slots, cos, sin, *cache.flat())
            q = x[:, :3]
        else:
            cache = LayerCache(cache.k.cpu(), cache.v.cpu())
            q = ops.rotary_into_cache(x.cpu(), 3, 2, pos.cpu(), slots.cpu(), cos.cpu(),
                                      sin.cpu(), cache)
        results.append(torch.cat([q.flatten().cpu(), cache.k.flatten().cpu(),
                                  cache.v.flatten().cpu()]))
    return results[0], results[1]


def _torch(fn, *args):
    """The torch version of an op (what ops uses off CUDA), on the CPU."""
    return fn(*(a.cpu() if isinstance(a, torch.Tensor) else a for a in args))


def main(device: str) -> None:
    for name, got, want in [*decode_cases(device), *prefill_cases(device),
                            *elementwise_cases(device), *gemv_cases(device),
                            *folded_output_cases(device), *argmax_cases(device),
                            *(pdl_chain_case(device) if device == "cuda" else [])]:
        err = (got.float().cpu() - want.float().cpu()).abs().max().item()
        print(json.dumps({"case": name, "max_abs_err": err, "shape": list(got.shape),
                          "dtype": str(got.dtype)}))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "cpu")
