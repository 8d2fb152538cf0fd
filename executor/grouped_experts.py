"""Routed experts with no host sync, so a MoE decode step can be captured in a CUDA graph.

`model.run_experts` sorts the rows by expert and calls each expert once on its run: the
fewest FLOPs, but the run lengths come to the host every layer. Here every shape follows
from the row count alone. On CUDA (`sync_free`) for a step of at most MAX_SYNC_FREE_ROWS rows:

- few picks (3 x rows x top-k <= experts): each (row, pick) gathers its expert's weights and
  one batched matmul applies them: the picked experts' bytes move three times (the gather
  reads them and writes a copy, the matmul reads the copy), which is less than every
  expert's once while the picks are under a third of the experts;
- more: every expert over every row, weighted by a dense [rows, experts] routing matrix that
  is zero off the picks. It reads each expert's weights once, as any step that touches most
  experts must, at experts / top-k times the FLOPs, which stay under the time of those reads
  while rows <= a GPU's FLOP-per-byte ratio (about 180 on an H200: 781 TFLOP/s of bf16
  matmul over 4.27 TB/s of copy, both measured, docs/benchmarks.md).

The experts' weights are stacked per layer (`StackedExperts`): w13 [experts, 2 x width,
hidden] and w2 [experts, hidden, width]; each expert's own Linear weights become views of
the stack, so both paths read the same bytes and nothing is held twice.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from . import ops
from .weight_marks import WeightMarks

MAX_SYNC_FREE_ROWS = 128
"""Steps of more rows take the sorted path (their FLOPs matter more than one host sync)."""


def sync_free(x: torch.Tensor) -> bool:
    """Whether a step over rows `x` takes the sync-free paths: on CUDA, where a host sync
    stalls the device's queue and breaks a graph capture, for up to MAX_SYNC_FREE_ROWS rows.
    On a CPU a sync costs nothing and the sorted path wins where the experts are not tiny
    (scripts/bench_moe_paths.py, docs/benchmarks.md)."""
    return x.is_cuda and x.shape[0] <= MAX_SYNC_FREE_ROWS


class StackedExperts:
    """One MoE layer's expert weights as two stacked tensors, made on first use (or by
    model.fuse_weights at load) and again whenever any expert's weight was replaced (a
    .to(), a TP reshard, a checkpoint load, a new Parameter): each expert's weights are
    checked, parameter and storage (weight_marks.WeightMarks, as for FusedProjection)."""

    def __init__(self, experts: Sequence[nn.Module]):
        self.experts = experts
        self._stacked_from = WeightMarks()
        self.w13: torch.Tensor | None = None
        self.w2: torch.Tensor | None = None

    def _linears(self) -> list[nn.Linear]:
        return [lin for expert in self.experts for lin in (expert.w1, expert.w3, expert.w2)]

    def weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(w13 [experts, 2 x width, hidden], w2 [experts, hidden, width])."""
        if not self._stacked_from.current(self._linears()):
            self._stack()
        return self.w13, self.w2

    @torch.no_grad()
    def _stack(self) -> None:
        self.w13 = self.w2 = None  # the old stack goes before the new one is allocated
        first = self.experts[0]
        width, hidden = first.w1.weight.shape
        like = first.w1.weight
        self.w13 = like.new_empty((len(self.experts), 2 * width, hidden))
        self.w2 = like.new_empty((len(self.experts), hidden, width))
        for e, expert in enumerate(self.experts):
            expert.w13.fuse_into(self.w13[e])
            self.w2[e].copy_(expert.w2.weight.data)
            expert.w2.weight.data = self.w2[e]
        self._stacked_from.take(self._linears())


def gathered_experts(x: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor,
                     w13: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
    """sum_k weights[:, k] * expert_{ids[:, k]}(x), through each pick's gathered weights."""
    n, k = ids.shape
    flat = ids.reshape(-1)
    rows = x.repeat_interleave(k, dim=0)  # a Python int count: no sync
    h = torch.bmm(w13[flat], rows.unsqueeze(-1)).squeeze(-1)
    y = torch.bmm(w2[flat], ops.silu_mul(h).unsqueeze(-1)).squeeze(-1)
    return torch.bmm(weights.unsqueeze(1), y.view(n, k, -1)).squeeze(1)


def all_experts(x: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor,
                w13: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
    """The same sum, every expert over every row, weighted by the dense routing matrix."""
    n, experts = x.shape[0], w13.shape[0]
    h = torch.matmul(x, w13.transpose(1, 2))  # [experts, n, 2 x width]
    act = ops.silu_mul(h.view(experts * n, -1)).view(experts, n, -1)
    y = torch.bmm(act, w2.transpose(1, 2))  # [experts, n, hidden]
    route = x.new_zeros((n, experts)).scatter_(1, ids, weights)
    return torch.bmm(route.unsqueeze(1), y.transpose(0, 1)).squeeze(1)


def grouped_experts(x: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor,
                    stacked: StackedExperts) -> torch.Tensor:
    """The sync-free sum for a step of at most MAX_SYNC_FREE_ROWS rows (see the module)."""
    w13, w2 = stacked.weights()
    path = gathered_experts if 3 * ids.numel() <= w13.shape[0] else all_experts
    return path(x, weights, ids, w13, w2)
