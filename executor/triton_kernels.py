"""Triton kernels for the GPU step: paged decode and prefill attention, RMSNorm, rotary,
SiLU-and-mul, the logits in fp32 with their argmax.

Each replaces a chain of small torch kernels by one launch (the decode step at small batch is
launch-bound, see docs/benchmarks.md) and runs under CUDA graph capture. Imported only on
CUDA (executor/ops.py decides); `TRITON_INTERPRET=1` runs them on the CPU for tests.

Decode attention is split-K ("flash-decoding"): program (row, kv head, split) reads its
share of the row's live positions straight from the paged cache (no gather, nothing past the
context), tile by tile across pages, for the query heads of that KV head (padded to 16 for
the tensor cores), and keeps a running max, sum and weighted value; the last split of each
(row, KV head) to finish (an atomic count) merges them, in the same launch. The split count
is fixed per launch shape, so a captured graph replays for any context length.

Prefill attention takes every prefill chunk of a step in one launch (flash-attention's
forward over the paged cache): program (work item, head) holds up to PREFILL_BLOCK_M queries
of one chunk and walks that chunk's cached positions up to its last query's, tile by tile
through its block table, causal by position, with the same running max and sum.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .attention import PREFILL_BLOCK_M

try:  # programmatic dependent launch (Hopper and later; Triton 3.5 and later)
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait
    PDL_AVAILABLE = True
except ImportError:  # pragma: no cover - an older Triton: the kernels run without it
    PDL_AVAILABLE = False

    @triton.jit
    def gdc_launch_dependents():
        pass

    @triton.jit
    def gdc_wait():
        pass

TARGET_PROGRAMS = 512
"""Decode attention aims at about this many programs (rows x KV heads x splits): enough to
fill an H200's 132 multiprocessors a few times over at batch 1."""
MAX_SPLITS = 32
DECODE_TILE = 64
"""Cached positions one decode-attention program reads per iteration (half that for head
dims above 64, to keep the K and V tiles in registers)."""


MERGE_ELEMENTS = 8192
"""Partial values the merging program loads at once (heads x splits x head dim, fp32): 64
registers a thread, so its loads are in flight together."""


def _pow2(n: int) -> int:
    return triton.next_power_of_2(max(int(n), 1))


def launch_options(pdl: bool) -> dict:
    """Launch options of a kernel taken with programmatic dependent launch (`pdl`): it may
    start once every program of the kernel before has let it (gdc_launch_dependents), and
    waits (gdc_wait) before it reads what that kernel wrote. Every kernel launched so waits,
    so a later kernel also sees what earlier ones wrote. The small kernels let the next one
    start at once; a GEMV only after its loop, so that at most one GEMV ahead is loading
    its weights early. Only inside CUDA graphs (ops.graph_kernels)."""
    return {"launch_pdl": True} if pdl else {}


@triton.jit
def _pdl_wait(PDL: tl.constexpr):
    """Let the next kernel launch, then wait for the one before (with PDL; else nothing)."""
    if PDL:
        gdc_launch_dependents()
        gdc_wait()


@triton.jit
def _kv_offsets(table_ptr, pos, valid, kvh, dd, dmask, stride_cb, stride_cs, stride_ch,
                BLOCK_SIZE: tl.constexpr):
    """Offsets [positions, D_P] in the caches of KV head `kvh`'s rows at cached positions
    `pos` of the sequence whose block table starts at `table_ptr`, over as many pages as
    they span, and their mask (`valid` rows, the head dim)."""
    page = tl.load(table_ptr + pos // BLOCK_SIZE, mask=valid, other=0).to(tl.int64)
    offs = (page[:, None] * stride_cb + (pos % BLOCK_SIZE)[:, None] * stride_cs
            + kvh * stride_ch + dd[None, :])
    return offs, valid[:, None] & dmask[None, :]


@triton.jit
def _kv_tile(k_ptr, v_ptr, table_ptr, pos, valid, kvh, dd, dmask, stride_cb, stride_cs,
             stride_ch, BLOCK_SIZE: tl.constexpr):
    """K and V rows [positions, D_P] at `pos` (_kv_offsets): one gathered load each, so a
    program waits for memory once per tile (zeros where not `valid`)."""
    offs, kvmask = _kv_offsets(table_ptr, pos, valid, kvh, dd, dmask, stride_cb, stride_cs,
                               stride_ch, BLOCK_SIZE)
    return (tl.load(k_ptr + offs, mask=kvmask, other=0.0),
            tl.load(v_ptr + offs, mask=kvmask, other=0.0))


@triton.jit
def _softmax_step(q, k, v, keep, m, lsum, acc, scale):
    """One tile of flash attention's online softmax: scores q.k (where `keep`), and the
    running max `m`, sum `lsum` and weighted values `acc` updated with them."""
    s = tl.dot(q, tl.trans(k), input_precision="ieee") * scale
    s = tl.where(keep, s, float("-inf"))
    m_new = tl.maximum(m, tl.max(s, axis=1))
    p = tl.exp(s - m_new[:, None])
    alpha = tl.exp(m - m_new)
    lsum = lsum * alpha + tl.sum(p, axis=1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision="ieee")
    return m_new, lsum, acc


@triton.jit
def _merge_splits(acc_ptr, m_ptr, l_ptr, out_ptr, row, head0, heads_left, stride_ot,
                  stride_oh, num_heads, num_splits, HEADS: tl.constexpr,
                  HEAD_DIM: tl.constexpr, D_P: tl.constexpr, S_P: tl.constexpr):
    """Heads head0.. (HEADS of them, at most heads_left) of `row`: their splits' partial
    results merged by their maxima into out, all loads issued at once. The partials come
    from other programs: loaded past L1 (.cg), which is not coherent."""
    h = tl.arange(0, HEADS)
    s = tl.arange(0, S_P)
    dd = tl.arange(0, D_P)
    hmask = h < heads_left
    mask = hmask[:, None] & (s < num_splits)[None, :]
    part = (row * num_heads + head0 + h)[:, None] * num_splits + s[None, :]
    m = tl.load(m_ptr + part, mask=mask, other=float("-inf"), cache_modifier=".cg")
    lsum = tl.load(l_ptr + part, mask=mask, other=0.0, cache_modifier=".cg")
    acc = tl.load(acc_ptr + part[:, :, None] * D_P + dd[None, None, :], mask=mask[:, :, None],
                  other=0.0, cache_modifier=".cg")
    top = tl.max(m, axis=1)
    w = tl.exp(m - top[:, None])  # an empty split has m = -inf: weight 0
    out = tl.sum(w[:, :, None] * acc, axis=1) / tl.sum(w * lsum, axis=1)[:, None]
    tl.store(out_ptr + row * stride_ot + (head0 + h)[:, None] * stride_oh + dd[None, :],
             out.to(out_ptr.dtype.element_ty), mask=hmask[:, None] & (dd < HEAD_DIM)[None, :])


# Arguments that change from step to step (q's strides: a view of the QKV output or a gathered
# copy; the block-table width; the split count) are not specialised on: a new value would
# compile a new variant (hundreds of ms) in the middle of serving.
@triton.jit(do_not_specialize=["stride_qt", "stride_qh", "stride_tr", "num_splits"])
def _decode_split_kernel(q_ptr, k_ptr, v_ptr, tables_ptr, lens_ptr, acc_ptr, m_ptr, l_ptr,
                         count_ptr, out_ptr, stride_qt, stride_qh, stride_cb, stride_cs,
                         stride_ch, stride_tr, stride_ot, stride_oh, num_heads, num_kv_heads,
                         num_splits, scale, GROUP: tl.constexpr, GROUP_P: tl.constexpr,
                         HEAD_DIM: tl.constexpr, D_P: tl.constexpr, BLOCK_SIZE: tl.constexpr,
                         TILE: tl.constexpr, S_P: tl.constexpr, PDL: tl.constexpr,
                         MERGE_HEADS: tl.constexpr):
    row = tl.program_id(0)
    kvh = tl.program_id(1)
    split = tl.program_id(2)
    if PDL:
        gdc_launch_dependents()
    # Before the wait for the kernel before: the step's inputs (lengths, block tables) and
    # the first tile's cached positions older than the newest, which no kernel of this step
    # writes; the newest position's key and value (this step's QKV kernel wrote them) after.
    ctx = tl.load(lens_ptr + row)
    tiles = tl.cdiv(ctx, TILE)
    per_split = tl.cdiv(tiles, num_splits)
    first = split * per_split
    last = tl.minimum(first + per_split, tiles)
    g = tl.arange(0, GROUP_P)
    dd = tl.arange(0, D_P)
    n = tl.arange(0, TILE)
    gmask = g < GROUP
    dmask = dd < HEAD_DIM
    table = tables_ptr + row * stride_tr
    pos = first * TILE + n
    valid = (pos < ctx) & (pos < last * TILE)  # none in an empty split
    offs, kvmask = _kv_offsets(table, pos, valid, kvh, dd, dmask, stride_cb, stride_cs,
                               stride_ch, BLOCK_SIZE)
    older = kvmask & (pos < ctx - 1)[:, None]
    k = tl.load(k_ptr + offs, mask=older, other=0.0)
    v = tl.load(v_ptr + offs, mask=older, other=0.0)
    if PDL:
        gdc_wait()
    newest = kvmask & (pos == ctx - 1)[:, None]
    k = tl.where(newest, tl.load(k_ptr + offs, mask=newest, other=0.0), k)
    v = tl.where(newest, tl.load(v_ptr + offs, mask=newest, other=0.0), v)
    heads = kvh * GROUP + g
    q = tl.load(q_ptr + row * stride_qt + heads[:, None] * stride_qh + dd[None, :],
                mask=gmask[:, None] & dmask[None, :], other=0.0)
    m = tl.full([GROUP_P], float("-inf"), tl.float32)
    lsum = tl.zeros([GROUP_P], tl.float32)
    acc = tl.zeros([GROUP_P, D_P], tl.float32)
    if first < last:  # an empty split keeps m = -inf (a tile of no positions would be NaN)
        m, lsum, acc = _softmax_step(q, k, v, valid[None, :], m, lsum, acc, scale)
    j = first + 1
    while j < last:  # a while loop: Triton's interpreter (tests) cannot range() over it
        pos = j * TILE + n  # a tile of TILE positions, over as many pages as it takes
        valid = pos < ctx
        k, v = _kv_tile(k_ptr, v_ptr, table, pos, valid, kvh, dd, dmask, stride_cb, stride_cs,
                        stride_ch, BLOCK_SIZE)
        m, lsum, acc = _softmax_step(q, k, v, valid[None, :], m, lsum, acc, scale)
        j += 1
    part = (row * num_heads + heads) * num_splits + split
    tl.store(m_ptr + part, m, mask=gmask)
    tl.store(l_ptr + part, lsum, mask=gmask)
    tl.store(acc_ptr + part[:, None] * D_P + dd[None, :], acc, mask=gmask[:, None])
    # The last split of (row, kv head) to finish merges all of them: every thread's stores
    # are in before the count (barrier, then a release), and the count's acquire orders the
    # last one's loads after all the others' stores. It resets the count for the next launch.
    tl.debug_barrier()
    counter = count_ptr + row * num_kv_heads + kvh
    if tl.atomic_add(counter, 1, sem="acq_rel") == num_splits - 1:
        for h0 in tl.static_range(0, GROUP, MERGE_HEADS):
            _merge_splits(acc_ptr, m_ptr, l_ptr, out_ptr, row, kvh * GROUP + h0, GROUP - h0,
                          stride_ot, stride_oh, num_heads, num_splits, MERGE_HEADS, HEAD_DIM,
                          D_P, S_P)
        tl.atomic_xchg(counter, 0)


_COUNTS: dict[tuple[str, torch.device], list[torch.Tensor]] = {}


def program_counts(kernel: str, device: torch.device, n: int) -> torch.Tensor:
    """At least n int32 counts of programs done, for the kernels whose last program to
    finish does the launch's last step and resets its count (decode attention's merge per
    (row, KV head), the add + norm GEMV's norm): zero between launches, so one buffer per
    kernel and device serves every launch on its stream, also inside CUDA graphs. A launch
    that needs more gets a bigger one (zeros); the smaller stay allocated, since captured
    graphs hold their addresses."""
    held = _COUNTS.setdefault((kernel, device), [])
    if not held or held[-1].numel() < n:
        held.append(torch.zeros(max(n, 1024, 2 * held[-1].numel() if held else 0),
                                dtype=torch.int32, device=device))
    return held[-1]


_MERGE_SPLITS = _pow2(MAX_SPLITS)
"""The merge's split axis, whatever a launch's split count (paged_decode_attention)."""


def decode_splits(rows: int, kv_heads: int) -> int:
    """Splits per (row, KV head): enough programs to fill the GPU, at most MAX_SPLITS."""
    return max(1, min(MAX_SPLITS, -(-TARGET_PROGRAMS // (rows * kv_heads))))


def paged_decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                           block_tables: torch.Tensor, context_lens: torch.Tensor,
                           pdl: bool = False) -> torch.Tensor:
    """q [rows, heads, d] (last dim contiguous); caches [blocks, block_size, kv_heads, d]
    (same strides); block_tables [rows, width] int32; context_lens [rows] int64, >= 1;
    `pdl`: launch_options."""
    rows, heads, d = q.shape
    _, block_size, kv_heads, _ = k_cache.shape
    if k_cache.stride() != v_cache.stride() or k_cache.stride(-1) != 1 or q.stride(-1) != 1:
        raise ValueError("paged_decode_attention needs K and V caches of one layout and a "
                         "contiguous head dimension")
    out = torch.empty((rows, heads, d), dtype=q.dtype, device=q.device)
    if rows == 0:
        return out
    # tl.dot needs every side >= 16: query heads of a KV head and the head dim padded. The
    # merge's split axis is _MERGE_SPLITS whatever the split count, so that one compiled
    # kernel serves every row count (a new one cost a step 0.6-0.8 s on first use).
    splits, group = decode_splits(rows, kv_heads), heads // kv_heads
    d_p = max(16, _pow2(d))
    acc = torch.empty((rows, heads, splits, d_p), dtype=torch.float32, device=q.device)
    m = torch.empty((rows, heads, splits), dtype=torch.float32, device=q.device)
    lsum = torch.empty_like(m)
    _decode_split_kernel[(rows, kv_heads, splits)](
        q, k_cache, v_cache, block_tables, context_lens, acc, m, lsum,
        program_counts("decode attention", q.device, rows * kv_heads), out, q.stride(0),
        q.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), block_tables.stride(0),
        out.stride(0), out.stride(1), heads, kv_heads, splits, d ** -0.5,
        GROUP=group, GROUP_P=max(16, _pow2(group)), HEAD_DIM=d, D_P=d_p,
        BLOCK_SIZE=block_size,
        TILE=DECODE_TILE if d_p <= 64 else DECODE_TILE // 2, S_P=_MERGE_SPLITS, PDL=pdl,
        MERGE_HEADS=min(_pow2(group), max(1, MERGE_ELEMENTS // (_MERGE_SPLITS * d_p))),
        **launch_options(pdl))
    return out


# Per-step arguments again not specialised on (q's strides, the table width).
@triton.jit(do_not_specialize=["stride_qt", "stride_qh", "stride_tr"])
def _prefill_kernel(q_ptr, k_ptr, v_ptr, out_ptr, info_ptr, tables_ptr, work_ptr,
                    stride_qt, stride_qh, stride_ot, stride_oh, stride_cb, stride_cs,
                    stride_ch, stride_tr, scale, GROUP: tl.constexpr, HEAD_DIM: tl.constexpr,
                    D_P: tl.constexpr, BLOCK_SIZE: tl.constexpr, BLOCK_M: tl.constexpr,
                    BLOCK_N: tl.constexpr):
    item = tl.program_id(0)
    head = tl.program_id(1)
    chunk = tl.load(work_ptr + item * 2)
    m0 = tl.load(work_ptr + item * 2 + 1)
    row0 = tl.load(info_ptr + chunk * 3)
    length = tl.load(info_ptr + chunk * 3 + 1)
    start = tl.load(info_ptr + chunk * 3 + 2)
    kvh = head // GROUP
    qi = m0 + tl.arange(0, BLOCK_M)
    dd = tl.arange(0, D_P)
    n = tl.arange(0, BLOCK_N)
    qmask = qi < length
    dmask = dd < HEAD_DIM
    rows = (row0 + qi).to(tl.int64)
    q = tl.load(q_ptr + rows[:, None] * stride_qt + head * stride_qh + dd[None, :],
                mask=qmask[:, None] & dmask[None, :], other=0.0)
    qpos = start + qi  # query i of the chunk sees cached positions 0..start + i
    hi = start + tl.minimum(m0 + BLOCK_M, length)
    m = tl.full([BLOCK_M], float("-inf"), tl.float32)
    lsum = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D_P], tl.float32)
    j = 0
    while j < hi:  # a while loop: Triton's interpreter (tests) cannot range() over it
        pos = j + n
        valid = pos < hi
        k, v = _kv_tile(k_ptr, v_ptr, tables_ptr + chunk * stride_tr, pos, valid, kvh, dd,
                        dmask, stride_cb, stride_cs, stride_ch, BLOCK_SIZE)
        keep = valid[None, :] & (pos[None, :] <= qpos[:, None])  # causal by position
        m, lsum, acc = _softmax_step(q, k, v, keep, m, lsum, acc, scale)
        j += BLOCK_N
    out = acc / lsum[:, None]
    tl.store(out_ptr + rows[:, None] * stride_ot + head * stride_oh + dd[None, :],
             out.to(out_ptr.dtype.element_ty), mask=qmask[:, None] & dmask[None, :])


def paged_prefill_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                            out: torch.Tensor, info: torch.Tensor, tables: torch.Tensor,
                            work: torch.Tensor) -> None:
    """Every prefill chunk of a step in one launch, written into `out`'s rows: chunk c holds
    rows info[c, 0].. (info[c, 1] of them) at positions info[c, 2].., causal over its cached
    positions through block table tables[c]; work [items, 2] int32: (chunk, first query)
    per PREFILL_BLOCK_M queries. q, out [tokens, heads, d] (last dim contiguous)."""
    heads, d = q.shape[1], q.shape[2]
    _, block_size, kv_heads, _ = k_cache.shape
    if k_cache.stride() != v_cache.stride() or k_cache.stride(-1) != 1 or q.stride(-1) != 1:
        raise ValueError("paged_prefill_attention needs K and V caches of one layout and a "
                         "contiguous head dimension")
    if work.shape[0] == 0:
        return
    d_p = max(16, _pow2(d))
    _prefill_kernel[(work.shape[0], heads)](
        q, k_cache, v_cache, out, info, tables, work, q.stride(0), q.stride(1),
        out.stride(0), out.stride(1), k_cache.stride(0), k_cache.stride(1),
        k_cache.stride(2), tables.stride(0), d ** -0.5, GROUP=heads // kv_heads,
        HEAD_DIM=d, D_P=d_p, BLOCK_SIZE=block_size, BLOCK_M=PREFILL_BLOCK_M,
        BLOCK_N=DECODE_TILE if d_p <= 64 else DECODE_TILE // 2)


@triton.jit(do_not_specialize=["stride_x", "stride_r", "stride_o", "stride_s"])
def _rms_norm_kernel(x_ptr, res_ptr, w_ptr, out_ptr, sum_ptr, stride_x, stride_r, stride_o,
                     stride_s, n, eps, ADD: tl.constexpr, BLOCK: tl.constexpr,
                     PDL: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < n
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    _pdl_wait(PDL)
    x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    if ADD:  # the residual stream: x + residual, rounded as a separate add would round it
        x += tl.load(res_ptr + row * stride_r + cols, mask=mask, other=0.0).to(tl.float32)
        x = x.to(sum_ptr.dtype.element_ty)
        tl.store(sum_ptr + row * stride_s + cols, x, mask=mask)
        x = x.to(tl.float32)
    inv = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / n + eps)
    tl.store(out_ptr + row * stride_o + cols, (x * inv * w).to(out_ptr.dtype.element_ty),
             mask=mask)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float,
             residual: torch.Tensor | None = None, pdl: bool = False
             ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """x [rows, n] (rows may be strided, n contiguous) normalised and scaled, in fp32; with
    `residual`, (norm(x + residual), x + residual) in one pass; `pdl`: launch_options."""
    rows, n = x.shape
    out = torch.empty((rows, n), dtype=x.dtype, device=x.device)
    total = torch.empty_like(out) if residual is not None else out
    if rows:
        res = residual if residual is not None else x
        _rms_norm_kernel[(rows,)](x, res, weight, out, total, x.stride(0), res.stride(0),
                                  out.stride(0), total.stride(0), n, eps,
                                  ADD=residual is not None, BLOCK=_pow2(n), PDL=pdl,
                                  **launch_options(pdl))
    return out if residual is None else (out, total)


@triton.jit
def _rotary_kernel(x_ptr, pos_ptr, cos_ptr, sin_ptr, stride_t, stride_h, stride_table,
                   num_heads, HALF: tl.constexpr, HALF_P: tl.constexpr, HEADS: tl.constexpr):
    t = tl.program_id(0)
    h = tl.program_id(1) * HEADS + tl.arange(0, HEADS)
    i = tl.arange(0, HALF_P)
    pos = tl.load(pos_ptr + t)
    cos = tl.load(cos_ptr + pos * stride_table + i, mask=i < HALF, other=0.0)
    sin = tl.load(sin_ptr + pos * stride_table + i, mask=i < HALF, other=0.0)
    mask = (h[:, None] < num_heads) & (i[None, :] < HALF)
    base = x_ptr + t * stride_t + h[:, None] * stride_h + i[None, :]
    x1 = tl.load(base, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(base + HALF, mask=mask, other=0.0).to(tl.float32)
    ty = x_ptr.dtype.element_ty
    tl.store(base, (x1 * cos[None, :] - x2 * sin[None, :]).to(ty), mask=mask)
    tl.store(base + HALF, (x2 * cos[None, :] + x1 * sin[None, :]).to(ty), mask=mask)


def rotary_(x: torch.Tensor, positions: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
            ) -> torch.Tensor:
    """Rotate x [tokens, heads, d] (last dim contiguous) in place by its rows' positions;
    cos/sin [max_seq_len, d / 2] fp32 tables."""
    tokens, heads, d = x.shape
    if tokens:
        per = min(_pow2(heads), 8)
        _rotary_kernel[(tokens, -(-heads // per))](
            x, positions, cos, sin, x.stride(0), x.stride(1), cos.stride(0), heads,
            HALF=d // 2, HALF_P=_pow2(d // 2), HEADS=per)
    return x


@triton.jit
def _rotary_cache_kernel(qkv_ptr, pos_ptr, slot_ptr, cos_ptr, sin_ptr, k_ptr, v_ptr,
                         stride_t, stride_h, stride_table, stride_cs, stride_ch, num_heads,
                         num_kv_heads, HALF: tl.constexpr, HALF_P: tl.constexpr,
                         PDL: tl.constexpr):
    t = tl.program_id(0)
    head = tl.program_id(1)
    i = tl.arange(0, HALF_P)
    mask = i < HALF
    _pdl_wait(PDL)
    src = qkv_ptr + t * stride_t + head * stride_h + i
    x1 = tl.load(src, mask=mask, other=0.0)
    x2 = tl.load(src + HALF, mask=mask, other=0.0)
    slot = tl.load(slot_ptr + t).to(tl.int64)
    if head >= num_heads + num_kv_heads:  # a value head: copied into the cache as it is
        dst = v_ptr + slot * stride_cs + (head - num_heads - num_kv_heads) * stride_ch + i
        tl.store(dst, x1, mask=mask)
        tl.store(dst + HALF, x2, mask=mask)
    else:
        pos = tl.load(pos_ptr + t)
        cos = tl.load(cos_ptr + pos * stride_table + i, mask=mask, other=0.0)
        sin = tl.load(sin_ptr + pos * stride_table + i, mask=mask, other=0.0)
        a, b = x1.to(tl.float32), x2.to(tl.float32)
        ty = qkv_ptr.dtype.element_ty
        r1, r2 = (a * cos - b * sin).to(ty), (b * cos + a * sin).to(ty)
        if head < num_heads:  # a query head: rotated in place
            tl.store(src, r1, mask=mask)
            tl.store(src + HALF, r2, mask=mask)
        else:  # a key head: rotated into the cache
            dst = k_ptr + slot * stride_cs + (head - num_heads) * stride_ch + i
            tl.store(dst, r1, mask=mask)
            tl.store(dst + HALF, r2, mask=mask)


def rotary_into_cache(qkv: torch.Tensor, num_heads: int, num_kv_heads: int,
                      positions: torch.Tensor, slots: torch.Tensor, cos: torch.Tensor,
                      sin: torch.Tensor, k_flat: torch.Tensor, v_flat: torch.Tensor,
                      pdl: bool = False) -> None:
    """qkv [tokens, heads + 2 kv_heads, d]: rotate the query heads in place and write the
    rotated keys and the values at their cache slots; k/v_flat [slots, kv_heads, d];
    `pdl`: launch_options."""
    tokens, total, d = qkv.shape
    if tokens:
        _rotary_cache_kernel[(tokens, total)](
            qkv, positions, slots, cos, sin, k_flat, v_flat, qkv.stride(0), qkv.stride(1),
            cos.stride(0), k_flat.stride(0), k_flat.stride(1), num_heads, num_kv_heads,
            HALF=d // 2, HALF_P=_pow2(d // 2), PDL=pdl, **launch_options(pdl))


@triton.jit
def _silu_mul_kernel(x_ptr, out_ptr, stride_x, stride_o, n, BLOCK: tl.constexpr,
                     PDL: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < n
    _pdl_wait(PDL)
    a = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    b = tl.load(x_ptr + row * stride_x + n + cols, mask=mask, other=0.0).to(tl.float32)
    y = a / (1.0 + tl.exp(-a)) * b
    tl.store(out_ptr + row * stride_o + cols, y.to(out_ptr.dtype.element_ty), mask=mask)


def silu_mul(x: torch.Tensor, pdl: bool = False) -> torch.Tensor:
    """x [rows, 2n] -> silu(x[:, :n]) * x[:, n:] as [rows, n]; `pdl`: launch_options."""
    rows, n = x.shape[0], x.shape[1] // 2
    out = torch.empty((rows, n), dtype=x.dtype, device=x.device)
    if rows:
        block = min(_pow2(n), 1024)
        _silu_mul_kernel[(rows, -(-n // block))](x, out, x.stride(0), out.stride(0), n,
                                                 BLOCK=block, PDL=pdl, **launch_options(pdl))
    return out


ARGMAX_BLOCK = 2048
"""Columns per program of the argmax: a 128,256-token vocabulary is 63 programs a row."""


@triton.jit
def _float_argmax_kernel(x_ptr, y_ptr, val_ptr, idx_ptr, count_ptr, out_ptr, stride_x,
                         stride_y, n, splits, BLOCK: tl.constexpr, S_P: tl.constexpr,
                         PDL: tl.constexpr):
    row = tl.program_id(0)
    split = tl.program_id(1)
    _pdl_wait(PDL)
    offs = split * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + row * stride_x + offs, mask=mask, other=float("-inf")).to(tl.float32)
    tl.store(y_ptr + row * stride_y + offs, x, mask=mask)
    # a NaN counts as +inf: the maximum (torch's argmax also takes a NaN, the first one even
    # after a +inf)
    x = tl.where(x == x, x, float("inf"))
    top = tl.max(x, axis=0)
    part = row * splits + split
    tl.store(val_ptr + part, top)
    tl.store(idx_ptr + part, tl.min(tl.where(x == top, offs, n), axis=0))
    # The last program of the row to finish (an atomic count, which it resets) takes the
    # first index of the largest maximum; barrier + release / acquire as in decode attention.
    tl.debug_barrier()
    if tl.atomic_add(count_ptr + row, 1, sem="acq_rel") == splits - 1:
        s = tl.arange(0, S_P)
        smask = s < splits
        v = tl.load(val_ptr + row * splits + s, mask=smask, other=float("-inf"),
                    cache_modifier=".cg")
        i = tl.load(idx_ptr + row * splits + s, mask=smask, other=n, cache_modifier=".cg")
        best = tl.max(v, axis=0)
        tl.store(out_ptr + row, tl.min(tl.where(v == best, i, n), axis=0).to(tl.int64))
        tl.atomic_xchg(count_ptr + row, 0)


def float_argmax(x: torch.Tensor, pdl: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(x in fp32, the first index of each row's maximum as int64 [rows]) of x [rows, n]
    (last dim contiguous), in one launch of ARGMAX_BLOCK columns a program: the decode
    graphs' logits and greedy tokens. `pdl`: launch_options."""
    rows, n = x.shape
    y = torch.empty((rows, n), dtype=torch.float32, device=x.device)
    out = torch.empty(rows, dtype=torch.long, device=x.device)
    if rows and n:
        splits = -(-n // ARGMAX_BLOCK)
        val = torch.empty(rows * splits, dtype=torch.float32, device=x.device)
        idx = torch.empty(rows * splits, dtype=torch.int32, device=x.device)
        _float_argmax_kernel[(rows, splits)](
            x, y, val, idx, program_counts("argmax", x.device, rows), out, x.stride(0),
            y.stride(0), n, splits, BLOCK=min(ARGMAX_BLOCK, _pow2(n)), S_P=_pow2(splits),
            PDL=pdl, num_warps=4, **launch_options(pdl))
    return y, out
