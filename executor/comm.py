"""One communication group as the model code sees it: who is in it, and thin collectives.

A `GroupCoordinator` wraps one torch process group created from core's `GroupInfo`. Its
collectives are the few the runners need; each counts the bytes it moves, per op, so
tests (and the planned `pypto check-comm`) can check traffic against what the layout implies.

Bytes counted are the payload this rank hands to the op (for `recv`, the payload it
receives): all_reduce / broadcast / send: the tensor; all_gather: the local input;
reduce_scatter: the full input; all_to_all: the whole input (its split sizes too, when they
are exchanged first). A group of one rank moves nothing: its collectives return at once and
count nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta

import torch
import torch.distributed as dist

from ..core.topology import GroupInfo
from .errors import CommTimeoutError


@dataclass
class CommStats:
    """Calls and bytes per collective op of one group (this rank's view)."""

    calls: dict[str, int] = field(default_factory=dict)
    bytes: dict[str, int] = field(default_factory=dict)

    def add(self, op: str, nbytes: int) -> None:
        self.calls[op] = self.calls.get(op, 0) + 1
        self.bytes[op] = self.bytes.get(op, 0) + nbytes

    def reset(self) -> None:
        self.calls.clear()
        self.bytes.clear()

    def to_dict(self) -> dict:
        return {op: {"calls": self.calls[op], "bytes": self.bytes[op]} for op in sorted(self.calls)}


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


class GroupCoordinator:
    """This rank's view of one resolved group (TP, PP, DP, EP or world) and its collectives."""

    def __init__(self, info: GroupInfo, rank: int, process_group, device: torch.device,
                 timeout: timedelta | None = None):
        self.info = info
        self.kind = info.kind
        self.index = info.index
        self.ranks: tuple[int, ...] = info.ranks
        self.rank = rank
        self.rank_in_group = info.rank_in_group(rank)
        self.world_size = info.size
        self.process_group = process_group
        self.device = device
        self.timeout = timeout
        """How long a collective of this group waits for a peer (its process group's)."""
        self.stats = CommStats()
        # gloo's reduce_scatter is several times slower than its all_to_all (measured in
        # docs/benchmarks.md); on gloo we reduce-scatter as all_to_all + a local sum instead
        self._reduce_scatter_by_all_to_all = (
            info.size > 1 and dist.get_backend(process_group) == "gloo")

    # --- membership ---------------------------------------------------------------------

    @property
    def first_rank(self) -> int:
        return self.ranks[0]

    @property
    def last_rank(self) -> int:
        return self.ranks[-1]

    @property
    def is_first_rank(self) -> bool:
        return self.rank_in_group == 0

    @property
    def is_last_rank(self) -> bool:
        return self.rank_in_group == self.world_size - 1

    @property
    def prev_rank(self) -> int | None:
        """Global rank before this one in the group (the previous PP stage); None if first."""
        return self.info.prev_rank(self.rank)

    @property
    def next_rank(self) -> int | None:
        """Global rank after this one in the group (the next PP stage); None if last."""
        return self.info.next_rank(self.rank)

    def __repr__(self) -> str:
        return (f"GroupCoordinator({self.kind}#{self.index} ranks={list(self.ranks)} "
                f"rank_in_group={self.rank_in_group})")

    # --- collectives --------------------------------------------------------------------

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        """Sum `t` over the group, in place; returns it."""
        if self.world_size == 1:
            return t
        self.stats.add("all_reduce", _nbytes(t))
        self._wait(dist.all_reduce, t, group=self.process_group)
        return t

    def all_gather(self, t: torch.Tensor, dim: int = 0) -> torch.Tensor:
        """Concatenate every member's `t` (equal shapes) along `dim`, in group order."""
        if self.world_size == 1:
            return t
        t = t.contiguous()
        self.stats.add("all_gather", _nbytes(t))
        parts = [torch.empty_like(t) for _ in range(self.world_size)]
        self._wait(dist.all_gather, parts, t, group=self.process_group)
        return torch.cat(parts, dim=dim)

    def reduce_scatter(self, t: torch.Tensor, dim: int = 0) -> torch.Tensor:
        """Sum `t` over the group and keep this member's equal chunk along `dim`."""
        if self.world_size == 1:
            return t
        if t.shape[dim] % self.world_size:
            raise ValueError(f"reduce_scatter: dim {dim} of size {t.shape[dim]} does not split "
                             f"into {self.world_size} equal chunks")
        self.stats.add("reduce_scatter", _nbytes(t))
        chunks = [c.contiguous() for c in t.chunk(self.world_size, dim=dim)]
        if self._reduce_scatter_by_all_to_all:
            send = torch.stack(chunks)
            received = torch.empty_like(send)
            self._wait(dist.all_to_all_single, received, send, group=self.process_group)
            return received.sum(0)
        out = torch.empty_like(chunks[self.rank_in_group])
        self._wait(dist.reduce_scatter, out, chunks, group=self.process_group)
        return out

    def all_to_all(
        self,
        t: torch.Tensor,
        input_split_sizes: Sequence[int] | None = None,
        output_split_sizes: Sequence[int] | None = None,
    ) -> torch.Tensor:
        """Send rows of `t` to each member: `input_split_sizes[i]` rows go to member i.

        With no split sizes the rows are split equally. With input sizes only, the output
        sizes are first exchanged (one small all_to_all of int64 counts).
        """
        if self.world_size == 1:
            return t
        t = t.contiguous()
        if input_split_sizes is None:
            if t.shape[0] % self.world_size:
                raise ValueError(f"all_to_all: {t.shape[0]} rows do not split equally over "
                                 f"{self.world_size} members; give input_split_sizes")
            out = torch.empty_like(t)
            self.stats.add("all_to_all", _nbytes(t))
            self._wait(dist.all_to_all_single, out, t, group=self.process_group)
            return out
        in_sizes = [int(s) for s in input_split_sizes]
        if output_split_sizes is None:
            output_split_sizes = self.exchange_split_sizes(in_sizes)
        out_sizes = [int(s) for s in output_split_sizes]
        out = t.new_empty((sum(out_sizes), *t.shape[1:]))
        self.stats.add("all_to_all", _nbytes(t))
        self._wait(dist.all_to_all_single, out, t, out_sizes, in_sizes, group=self.process_group)
        return out

    def exchange_split_sizes(self, input_split_sizes: Sequence[int]) -> list[int]:
        """Tell each member how many rows it will get from us; learn how many we get."""
        sizes = torch.tensor(list(input_split_sizes), dtype=torch.int64, device=self.device)
        return [int(s) for s in self.all_to_all(sizes).tolist()]

    def broadcast(self, t: torch.Tensor, src: int = 0) -> torch.Tensor:
        """Copy `t` from the member at position `src` of the group (a rank in the group, as in
        vLLM; default the first) to every member, in place."""
        if not 0 <= src < self.world_size:
            raise ValueError(f"{self.kind} broadcast src: {src} is not a rank in this group of "
                             f"{self.world_size} (0..{self.world_size - 1}); give the "
                             "position in the group, not a global rank")
        if self.world_size == 1:
            return t
        self.stats.add("broadcast", _nbytes(t))
        self._wait(dist.broadcast, t, group=self.process_group, group_src=src)
        return t

    def send(self, t: torch.Tensor, dst: int | None = None) -> None:
        """Send `t` to global rank `dst` (default: the next rank, i.e. the next PP stage)."""
        dst = self.next_rank if dst is None else dst
        if dst is None:
            raise ValueError(f"{self.kind} send: rank {self.rank} is the last of its group; "
                             "give dst")
        self._check_member(dst, "send dst")
        self.stats.add("send", _nbytes(t))
        self._wait(dist.send, t.contiguous(), group=self.process_group,
                   group_dst=self.info.rank_in_group(dst))

    def recv(
        self, shape: Sequence[int], dtype: torch.dtype, src: int | None = None
    ) -> torch.Tensor:
        """Receive a tensor of `shape`/`dtype` from global rank `src` (default: previous)."""
        src = self.prev_rank if src is None else src
        if src is None:
            raise ValueError(f"{self.kind} recv: rank {self.rank} is the first of its group; "
                             "give src")
        self._check_member(src, "recv src")
        out = torch.empty(tuple(shape), dtype=dtype, device=self.device)
        self._wait(dist.recv, out, group=self.process_group,
                   group_src=self.info.rank_in_group(src))
        self.stats.add("recv", _nbytes(out))
        return out

    def barrier(self) -> None:
        if self.world_size > 1:
            self._wait(dist.barrier, group=self.process_group)

    def _wait(self, collective: Callable, *args, **kwargs):
        """Run one torch collective; a peer that never arrives is a CommTimeoutError naming
        this group, the op and the limit, instead of the backend's bare message."""
        try:
            return collective(*args, **kwargs)
        except RuntimeError as e:
            if "timed out" not in str(e).lower():
                raise
            limit = (f"{self.timeout.total_seconds():g} s" if self.timeout is not None
                     else "its limit")
            raise CommTimeoutError(
                f"{self.kind.upper()} group #{self.index} (ranks {list(self.ranks)}): "
                f"{collective.__name__} on rank {self.rank} waited {limit} "
                "(PYPTO_COMM_TIMEOUT_S) for a peer that never joined: another rank of this "
                "group is stuck, slow or dead; see its output") from e

    def _check_member(self, rank: int, what: str) -> None:
        if rank not in self.ranks:
            raise ValueError(f"{self.kind} {what}: rank {rank} is not in this group "
                             f"{list(self.ranks)}")
