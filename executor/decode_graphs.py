"""CUDA graphs for the decode-only steps of a one-rank replica, one graph per batch bucket.

At small batch a decode step is bound by kernel launches, not by the GPU (docs/benchmarks.md):
a few hundred small kernels, each waiting for the host. Replaying a captured graph launches
them all at once. Each bucket's graph runs the whole model (embedding, layers with the paged
decode-attention kernel, LM head, greedy tokens) over static input buffers; a step of n
decodes copies its tokens, positions, cache slots, context lengths and block tables into the
first n rows, points the rows up to the bucket at the cache's scratch block (they write there
and read only there), replays the graph of the smallest bucket >= n and returns its n rows
of logits and greedy tokens.
The attention kernel reads each row's context length from the buffer, so one graph serves
every context length; MoE layers take grouped_experts' sync-free paths at these sizes,
batch 1's linear layers GEMV kernels, and the Triton kernels programmatic dependent launch
(ops.graph_kernels: launches cost the host nothing here, and each kernel may start while the
one before drains).
Graphs share one memory pool, captured largest first (vLLM's order).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import torch

from .attention import PagedAttentionMetadata
from .batch import ChunkLike, check_max_seq_len, int_tensor, padded_tables
from .context import ParallelContext
from .grouped_experts import MAX_SYNC_FREE_ROWS
from .kv_cache import PagedKVCache
from .model import Transformer
from .ops import ALL_GRAPH_KERNELS, GraphKernels, float_argmax, graph_kernels, use_triton

ROW_BY_ROW_MAX = 8
"""Up to this many rows a step's block tables go into the host buffer row by row (numpy
from each list), beyond it packed in one: the whole write of a step at 1,024 tokens on the
2-core CI machine, row by row / packed, 14.8 / 20.6 us at one row, 49.8 / 68.9 at 8, even at
16, 669 / 473 at 128 (scripts/bench_graph_inputs.py, docs/benchmarks.md)."""


def graph_buckets(max_batch: int) -> list[int]:
    """Batch sizes that get a graph: 1, 2, 4, 8, then two per doubling (12, 16, 24, 32, ...),
    and max_batch itself; a step pads up to the next one (at most a third more rows)."""
    sizes, b = [1, 2, 4, 8], 8
    while b < max_batch:
        sizes += [b + b // 2, 2 * b]
        b *= 2
    return sorted({s for s in sizes if s < max_batch} | {max_batch})


def graphs_unsupported(ctx: ParallelContext) -> str | None:
    """Why this rank's decode steps run eagerly, or None when they replay CUDA graphs."""
    if ctx.config.serve.enforce_eager:
        return "serve.enforce_eager is set"
    if ctx.device.type != "cuda":
        return f"the device is {ctx.device.type}, not CUDA"
    if not use_triton(torch.empty(0, device=ctx.device)):
        return "Triton is not installed (or PYPTO_KERNELS=torch)"
    if ctx.tp.world_size > 1 or ctx.pp.world_size > 1:
        return "the replica spans several ranks (TP/PP collectives are not captured yet)"
    if ctx.expert_parallel:
        return "expert parallelism sends all2all sizes through the host each step"
    return None


def graph_max_batch(ctx: ParallelContext) -> int:
    """The largest decode batch with a graph: serve.max_num_seqs; for MoE at most
    MAX_SYNC_FREE_ROWS (a bigger step sorts its rows by expert, which syncs)."""
    batch = ctx.config.serve.max_num_seqs
    return min(batch, MAX_SYNC_FREE_ROWS) if ctx.model.is_moe else batch


class DecodeGraphs:
    """The captured graphs of one runner and the static buffers they read."""

    def __init__(self, model: Transformer, kv_cache: PagedKVCache, max_batch: int,
                 max_seq_len: int, kernels: GraphKernels = ALL_GRAPH_KERNELS):
        self.model, self.kv_cache, self.max_seq_len = model, kv_cache, max_seq_len
        self.kernels = kernels
        self.block_size = kv_cache.block_size
        self.buckets = graph_buckets(max_batch)
        device = kv_cache.k.device
        width = -(-max_seq_len // self.block_size)
        # The step's inputs, one byte buffer on each side (the host's pinned on CUDA): rows
        # of tokens, positions, slots, context lengths (int64), then the block tables
        # (int32); one asynchronous copy of its live prefix per step.
        self._table_at = 4 * max_batch * 8
        cuda = device.type == "cuda"
        host_bytes = torch.zeros(self._table_at + max_batch * width * 4, dtype=torch.uint8)
        self._host_bytes = host_bytes.pin_memory() if cuda else host_bytes
        inputs, tables = self._views(self._host_bytes, max_batch, width)
        tables.fill_(kv_cache.scratch_block)
        self._host_inputs, self._host_tables = inputs.numpy(), tables.numpy()
        self._device_bytes = self._host_bytes.to(device)
        self.inputs, self.tables = self._views(self._device_bytes, max_batch, width)
        # a padding row's tokens, positions, slots (the scratch block's) and lengths
        self._pad = np.array([0, 0, kv_cache.scratch_block * self.block_size, 1])[:, None]
        # each bucket's greedy tokens, copied to the host inside its graph
        self._host_greedy = torch.zeros(max_batch, dtype=torch.long)
        if cuda:
            self._host_greedy = self._host_greedy.pin_memory()
        self._done = torch.cuda.Event() if cuda else None
        self._copies: dict[int, tuple[torch.Tensor, torch.Tensor, bool]] = {}
        self._rows: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        # the bucket of each row count (index n: the smallest bucket >= n)
        self._bucket_of = [0] + [next(s for s in self.buckets if s >= n)
                                 for n in range(1, max_batch + 1)]
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.logits: dict[int, torch.Tensor] = {}
        self.greedy: dict[int, torch.Tensor] = {}
        self.capture_s = 0.0
        self.replays = 0

    def _views(self, buffer: torch.Tensor, max_batch: int, width: int
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """The inputs [4, max_batch] int64 and block tables [max_batch, width] int32 in a
        buffer's bytes."""
        return (buffer[:self._table_at].view(torch.long).view(4, max_batch),
                buffer[self._table_at:].view(torch.int32).view(max_batch, width))

    def _forward(self, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        tokens, positions, slots, lens = self.inputs[:, :b]
        meta = PagedAttentionMetadata(positions=positions, slots=slots, decode_rows=None,
                                      block_tables=self.tables[:b], context_lens=lens,
                                      prefills=[])
        with graph_kernels(self.kernels):
            return float_argmax(self.model(tokens, meta, self.kv_cache))

    @torch.inference_mode()
    def capture(self) -> None:
        """Capture every bucket's graph (a warm-up run of each first: kernels compile and
        cuBLAS picks its algorithms outside the capture)."""
        start = time.perf_counter()
        self._rows.clear()  # views of the logits of an earlier capture
        self._write([], self.buckets[-1])
        pool = torch.cuda.graph_pool_handle()
        for b in reversed(self.buckets):
            self._forward(b)
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                self.logits[b], self.greedy[b] = self._forward(b)
                self._host_greedy[:b].copy_(self.greedy[b], non_blocking=True)
            self.graphs[b] = graph
        torch.cuda.synchronize()
        self.capture_s = time.perf_counter() - start

    def describe(self) -> str:
        return (f"CUDA graphs for decode batches of {', '.join(map(str, self.buckets))} "
                f"(captured in {self.capture_s:.1f} s)")

    def fits(self, chunks: Sequence[ChunkLike]) -> bool:
        """A step of only sampled one-token chunks, no more than the largest bucket."""
        return (0 < len(chunks) <= self.buckets[-1]
                and all(len(c.token_ids) == 1 and c.sample for c in chunks))

    def _write(self, chunks: Sequence[ChunkLike], b: int) -> None:
        """Copy the step's rows into the static buffers; rows len(chunks)..b-1 are padding.
        Written with list comprehensions and numpy in the host's buffer, then one copy. The
        buffer is free to write: every run waits for its graph, so for its copy too."""
        bs, n = self.block_size, len(chunks)
        pos = [c.start_pos for c in chunks]
        tables = [c.block_table for c in chunks]
        short = [i for i, (p, t) in enumerate(zip(pos, tables, strict=True))
                 if p // bs >= len(t)]
        if short:
            i = short[0]
            raise IndexError(f"position {pos[i]} needs {pos[i] // bs + 1} blocks, but the "
                             f"block table has {len(tables[i])}")
        host = self._host_inputs
        host[:, n:b] = self._pad
        width = 0
        if n:
            host[0, :n] = [c.token_ids[0] for c in chunks]
            host[1, :n] = pos
            host[2, :n] = [t[p // bs] * bs + p % bs for p, t in zip(pos, tables, strict=True)]
            host[3, :n] = [p + 1 for p in pos]
            width = max(pos) // bs + 1
            rows = self._host_tables
            if n <= ROW_BY_ROW_MAX:
                # a row's blocks past its own stay as they were: block ids of earlier steps,
                # at positions beyond its context, which the kernel does not read
                for i, table in enumerate(tables):
                    rows[i, :min(len(table), width)] = table[:width]
            else:  # the ints packed at C speed (~25 ns each), padded, in one assignment
                rows[:n, :width] = int_tensor(padded_tables(tables, width),
                                              torch.device("cpu"), "i").view(n, width).numpy()
        self._copy(n, width)

    def _copy(self, n: int, width: int) -> None:
        """The inputs and n whole table rows (one contiguous copy) unless the rows are over
        a MiB (long contexts): then the inputs, and the live columns apart. The slices of
        the one copy are made once per row count."""
        copy = self._copies.get(n)
        if copy is None:
            rows_bytes = n * self.tables.stride(0) * 4
            whole_rows = rows_bytes <= 1 << 20
            end = self._table_at + (rows_bytes if whole_rows else 0)
            copy = self._copies[n] = (self._device_bytes[:end], self._host_bytes[:end],
                                      whole_rows)
        dst, src, whole_rows = copy
        dst.copy_(src, non_blocking=True)
        if n and not whole_rows:
            self.tables[:n, :width].copy_(torch.from_numpy(self._host_tables[:n, :width]),
                                          non_blocking=True)

    @torch.inference_mode()
    def run(self, chunks: Sequence[ChunkLike]) -> tuple[torch.Tensor, list[int]]:
        """Logits [len(chunks), vocab] (fp32) of one decode step, by graph replay, and each
        row's greedy token (copied to the host inside the graph)."""
        if max(c.start_pos for c in chunks) >= self.max_seq_len:
            check_max_seq_len([c.start_pos + 1 for c in chunks], self.max_seq_len,
                              "shorten the sequence")
        n = len(chunks)
        b = self._bucket_of[n]
        self._write(chunks, b)
        self.graphs[b].replay()
        self.replays += 1
        rows = self._rows.get(n)
        if rows is None:  # views made once per row count (each slice costs host time)
            rows = self._rows[n] = (self.logits[b][:n], self._host_greedy[:n])
        logits = rows[0].clone()
        self._done.record()
        self._done.synchronize()
        return logits, rows[1].tolist()
