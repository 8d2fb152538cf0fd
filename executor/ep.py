"""Expert parallelism applied from outside: whole experts placed by core, tokens moved to them.

Each EP rank keeps the whole experts core's placement gives it (`RankInfo.experts`, linear
or round_robin). The router stays replicated. Inside a TP group the activations are
replicated, so each TP rank dispatches only its slice of the tokens and the combined
slices are put back together with one all_gather over TP (each rank's slice padded to the
largest, ceil(tokens / TP) rows: about a TP-th of the bytes of an all_reduce of all rows).

Backends (`parallel.all2all_backend`):
- `pypto_default`: rows (packed with their expert id and token index) go to their experts'
  owners with a variable-size all_to_all after the split sizes are exchanged, and come back
  with the reverse one; routing weights are applied at the source. 3 collectives a layer.
- `allgather_reducescatter`: every rank gathers all tokens (padded to the largest count;
  rows, expert ids and weights packed in one gather after a gather of the counts), applies
  its experts, and a reduce_scatter returns each rank the sum for its own tokens.
Every EP rank must enter every MoE layer, with or without tokens (see runner.run_dummy).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..core.placement import split_evenly
from .comm import GroupCoordinator
from .context import ParallelContext
from .model import MoE, Transformer, route, run_experts


def apply_ep(model: Transformer, ctx: ParallelContext) -> Transformer:
    """Replace every MoE layer by its expert-parallel form holding this rank's experts."""
    if not ctx.expert_parallel:
        return model
    for block in model.layers:
        if isinstance(block.ffn, MoE):
            block.ffn = ExpertParallelMoE(block.ffn, ctx, layer_id=block.layer_id)
    return model


class ExpertParallelMoE(nn.Module):
    """A MoE layer whose experts live on the EP group per core's placement."""

    def __init__(self, moe: MoE, ctx: ParallelContext, layer_id: int):
        super().__init__()
        placement = ctx.expert_placement
        self.layer_id = layer_id
        self.top_k = moe.top_k
        self.renormalize = moe.renormalize
        self.gate = moe.gate
        self.shared = moe.shared  # replicated: every rank runs it on all its rows
        self.local_ids = tuple(ctx.experts)
        self.experts = nn.ModuleDict({str(e): moe.experts[e] for e in self.local_ids})
        self.local_experts = {e: self.experts[str(e)] for e in self.local_ids}
        self.ep: GroupCoordinator = ctx.ep
        self.tp: GroupCoordinator = ctx.tp
        self.backend = ctx.config.parallel.all2all_backend
        self.register_buffer("owner", torch.tensor(
            [placement.owner_of(e) for e in range(placement.num_experts)], dtype=torch.long,
            device=ctx.device), persistent=False)
        self.register_buffer("local_id_tensor", torch.tensor(self.local_ids, device=ctx.device),
                             persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = split_evenly(x.shape[0], self.tp.world_size)[self.tp.rank_in_group]
        xs = x[rows.start:rows.stop]
        weights, ids = route(self.gate, xs, self.top_k, self.renormalize)
        if self.backend == "allgather_reducescatter":
            out = self._gather_scatter(xs, weights, ids)
        else:
            out = self._all_to_all(xs, weights, ids)
        if self.tp.world_size > 1:
            out = self._gather_tp_slices(out, x.shape[0])
        return out if self.shared is None else out + self.shared(x)

    def _gather_tp_slices(self, out: torch.Tensor, n: int) -> torch.Tensor:
        """All `n` rows on every TP rank from each rank's combined slice: one all_gather of
        the slices padded to the largest (exact copies, and 1/TP of an all_reduce's bytes)."""
        slices = split_evenly(n, self.tp.world_size)
        width = len(slices[0])  # split_evenly puts the larger slices first
        padded = torch.cat((out, out.new_zeros(width - out.shape[0], out.shape[1])))
        gathered = self.tp.all_gather(padded).view(len(slices), width, out.shape[1])
        return torch.cat([gathered[i, :len(s)] for i, s in enumerate(slices)])

    def _run_local(self, x: torch.Tensor, expert_ids: torch.Tensor) -> torch.Tensor:
        """Each row through its (local) expert."""
        return run_experts(x, expert_ids, self.local_experts, self.owner.numel())

    def _all_to_all(self, xs, weights, ids) -> torch.Tensor:
        n, k = ids.shape
        flat_ids = ids.reshape(-1)
        token = torch.arange(n, device=xs.device).repeat_interleave(k)
        dest = self.owner[flat_ids]
        order = torch.argsort(dest, stable=True)
        send_counts = torch.bincount(dest, minlength=self.ep.world_size).tolist()
        recv_counts = self.ep.exchange_split_sizes(send_counts)
        send = pack_rows(xs[token[order]], torch.stack((flat_ids[order], token[order]), dim=1))
        recv_rows, recv_meta = unpack_rows(
            self.ep.all_to_all(send, send_counts, recv_counts),
            (xs.dtype, xs.shape[1:]), (torch.long, (2,)))
        results = self._run_local(recv_rows, recv_meta[:, 0])
        back = self.ep.all_to_all(results, recv_counts, send_counts)
        out = torch.zeros_like(xs)
        out.index_add_(0, token[order], back * weights.reshape(-1)[order, None])
        return out

    def _gather_scatter(self, xs, weights, ids) -> torch.Tensor:
        n, k = ids.shape
        ep = self.ep
        counts = ep.all_gather(torch.tensor([n], dtype=torch.long, device=xs.device)).tolist()
        width = max(counts)
        pad = width - n
        x_pad = torch.cat((xs, xs.new_zeros(pad, xs.shape[1])))
        ids_pad = torch.cat((ids, ids.new_full((pad, k), -1)))
        w_pad = torch.cat((weights, weights.new_zeros(pad, k)))
        gx, gids, gw = unpack_rows(ep.all_gather(pack_rows(x_pad, ids_pad, w_pad)),
                                   (xs.dtype, xs.shape[1:]), (ids.dtype, (k,)),
                                   (weights.dtype, (k,)))
        token, slot = torch.where(torch.isin(gids, self.local_id_tensor))
        y = self._run_local(gx[token], gids[token, slot])
        partial = torch.zeros_like(gx).index_add_(0, token, y * gw[token, slot, None])
        return ep.reduce_scatter(partial)[:n]


def pack_rows(*parts: torch.Tensor) -> torch.Tensor:
    """Rows of several tensors side by side as raw bytes [rows, bytes], so one collective
    moves them all, exactly, whatever their dtypes."""
    n = parts[0].shape[0]
    return torch.cat([p.contiguous().view(torch.uint8).reshape(n, _row_bytes(p.shape[1:], p.dtype))
                      for p in parts], dim=1)


def unpack_rows(packed: torch.Tensor, *specs: tuple[torch.dtype, tuple[int, ...]]
                ) -> list[torch.Tensor]:
    """Inverse of pack_rows: `specs` are (dtype, row shape) of each part, in order."""
    n, out, start = packed.shape[0], [], 0
    for dtype, shape in specs:
        width = _row_bytes(shape, dtype)
        raw = packed.new_empty((n, width))  # fresh, so the dtype view is aligned
        raw.copy_(packed[:, start:start + width])
        out.append(raw.view(dtype).reshape(n, *shape))
        start += width
    return out


def _row_bytes(shape, dtype: torch.dtype) -> int:
    return math.prod(shape) * torch.empty((), dtype=dtype).element_size()


def expert_modules(model: Transformer) -> list[ExpertParallelMoE]:
    return [b.ffn for b in model.layers if isinstance(b.ffn, ExpertParallelMoE)]

