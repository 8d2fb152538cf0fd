"""Topology resolution: every rank's coordinates, groups, layers, experts and KV shard.

`resolve_topology(config)` is the one place the layout is derived; the executor turns its
groups into process groups, the launcher reads coordinates, the CLI prints it. All lookups
are per rank and closed-form, so a million-rank world is resolved without enumerating it.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator
from dataclasses import dataclass, fields
from functools import cached_property

from .config import ServingConfig
from .layout import GROUP_KINDS, Layout, UnknownGroupError
from .placement import (
    ExpertPlacement,
    head_shard,
    kv_head_shard,
    layer_partition,
    mlp_shard,
    vocab_shard,
)


class GroupUnavailableError(LookupError):
    """A group kind that exists in general but not in this layout (EP on a dense model)."""

    def __str__(self) -> str:
        return self.args[0]


@dataclass(frozen=True)
class KVCacheShard:
    """The slice of the KV cache one rank holds: its stage's layers x its KV-head shard.

    `replicas` > 1 means the same KV heads are cached on that many TP ranks (fewer KV heads
    than TP ranks). Block tables and prefix-cache metadata belong to the DP replica's
    scheduler (`replica`), and one block id is valid on every rank of the replica.
    """

    replica: int
    layers: range
    kv_heads: range
    replicas: int

    def to_dict(self) -> dict:
        return _plain(self)


@dataclass(frozen=True)
class RankInfo:
    """Everything one rank is: where it runs, its coordinates and what it holds."""

    rank: int
    node: int
    local_rank: int
    device: str
    dp: int
    pp: int
    tp: int
    ep: int | None
    layers: range
    attention_heads: range
    mlp_columns: range  # of the dense MLP, and of every expert when experts are TP-sharded
    experts: tuple[int, ...]
    vocab: range  # embedding (first stage) / LM head (last stage) rows; empty in between
    kv_cache: KVCacheShard
    is_first_stage: bool
    is_last_stage: bool

    def to_dict(self) -> dict:
        """Plain JSON-able data: ranges as [start, stop), tuples as lists, in field order."""
        return _plain(self)


@dataclass(frozen=True)
class GroupInfo:
    """One communication group: its kind, its index among groups of that kind, its ranks.

    `ranks` is ascending (for PP that is stage order), so position lookups bisect instead
    of scanning a group that may hold tens of thousands of ranks.
    """

    kind: str
    index: int
    ranks: tuple[int, ...]

    @property
    def size(self) -> int:
        return len(self.ranks)

    def rank_in_group(self, rank: int) -> int:
        i = bisect_left(self.ranks, rank)
        if i == len(self.ranks) or self.ranks[i] != rank:
            raise ValueError(f"rank {rank} is not in {self.kind} group {self.index}")
        return i

    def prev_rank(self, rank: int) -> int | None:
        i = self.rank_in_group(rank)
        return self.ranks[i - 1] if i > 0 else None

    def next_rank(self, rank: int) -> int | None:
        i = self.rank_in_group(rank)
        return self.ranks[i + 1] if i + 1 < self.size else None

    def to_dict(self) -> dict:
        return {"kind": self.kind, "index": self.index, "ranks": list(self.ranks)}


class Topology:
    """The resolved layout of one config. Immutable; build it with `resolve_topology`."""

    def __init__(self, config: ServingConfig):
        self.config = config
        self.layout: Layout = config.layout
        p, m = config.parallel, config.model
        self.stage_layers: tuple[range, ...] = tuple(
            layer_partition(m.num_layers, p.pipeline_parallel_size, p.pipeline_layer_partition)
        )
        self.expert_placement: ExpertPlacement | None = (
            ExpertPlacement(m.num_experts, p.ep_size, p.expert_placement_strategy)
            if p.enable_expert_parallel and m.is_moe else None
        )

    @property
    def world_size(self) -> int:
        return self.layout.world_size

    @cached_property
    def group_kinds(self) -> tuple[str, ...]:
        """Group kinds this layout has, in the order every rank creates them."""
        return tuple(k for k in GROUP_KINDS if k != "ep" or self.expert_placement is not None)

    @cached_property
    def _all_experts(self) -> tuple[int, ...]:
        return tuple(range(self.config.model.num_experts))

    def _check_kind(self, kind: str) -> None:
        if kind == "ep" and self.expert_placement is None:
            m = self.config.model
            why = (f"model '{m.name}' is dense" if not m.is_moe
                   else "parallel.enable_expert_parallel is false")
            raise GroupUnavailableError(f"this layout has no EP group: {why}")
        if kind not in GROUP_KINDS:
            raise UnknownGroupError(kind, list(self.group_kinds))

    def rank_info(self, rank: int) -> RankInfo:
        lay, m, c = self.layout, self.config.model, self.config.cluster
        co = lay.coords(rank)
        dp, pp, tp = co["dp"], co["pp"], co["tp"]
        ep = lay.rank_in_group("ep", rank) if self.expert_placement else None
        if self.expert_placement is not None:
            experts = self.expert_placement.experts_of(ep)
        else:
            experts = self._all_experts  # dense or TP-sharded experts: all of them
        kv = kv_head_shard(m.num_kv_heads, lay.tp, tp)
        platform = c.platform if c.platform != "auto" else "device"
        local = rank % c.devices_per_node
        return RankInfo(
            rank=rank,
            node=rank // c.devices_per_node,
            local_rank=local,
            device=f"{platform}:{local}",
            dp=dp, pp=pp, tp=tp, ep=ep,
            layers=self.stage_layers[pp],
            attention_heads=head_shard(m.num_attention_heads, lay.tp, tp),
            mlp_columns=mlp_shard(m.intermediate_size, lay.tp, tp),
            experts=experts,
            vocab=(vocab_shard(m.vocab_size, lay.tp, tp) if pp in (0, lay.pp - 1)
                   else range(0)),
            kv_cache=KVCacheShard(
                replica=dp, layers=self.stage_layers[pp], kv_heads=kv,
                replicas=max(1, lay.tp // m.num_kv_heads),
            ),
            is_first_stage=pp == 0,
            is_last_stage=pp == lay.pp - 1,
        )

    def num_groups(self, kind: str) -> int:
        self._check_kind(kind)
        return self.layout.num_groups(kind)

    def group(self, kind: str, rank: int) -> GroupInfo:
        """The group of `kind` that `rank` belongs to."""
        self._check_kind(kind)
        index = self.layout.group_index(kind, rank)
        return GroupInfo(kind, index, self.layout.group_ranks(kind, index))

    def group_at(self, kind: str, index: int) -> GroupInfo:
        self._check_kind(kind)
        return GroupInfo(kind, index, self.layout.group_ranks(kind, index))

    def groups(self, kind: str) -> Iterator[GroupInfo]:
        """Every group of `kind`, by index: the order in which all ranks must create them."""
        self._check_kind(kind)
        for index, ranks in enumerate(self.layout.iter_group_ranks(kind)):
            yield GroupInfo(kind, index, ranks)

    def restart_domains(self) -> tuple[range, ...]:
        """The sets of ranks that must restart together, each a contiguous run of ranks.

        A rank's collectives reach only the ranks of its domain, so one domain can be torn
        down and restarted while the others run on. Without EP each DP replica is one
        domain (its PP x TP ranks, contiguous since DP is the outermost dimension); with EP
        the experts' all-to-all spans the DP replicas, so the world is one domain; DP 1 is
        one domain either way.
        """
        size = self.layout.pp * self.layout.tp
        if self.expert_placement is not None or self.layout.dp == 1:
            return (range(self.world_size),)
        return tuple(range(d * size, (d + 1) * size) for d in range(self.layout.dp))

    def ranks(self, start: int = 0, stop: int | None = None) -> Iterator[RankInfo]:
        stop = self.world_size if stop is None else min(stop, self.world_size)
        for r in range(start, stop):
            yield self.rank_info(r)


def resolve_topology(config: ServingConfig) -> Topology:
    """Resolve a validated config into its topology (O(1): nothing is enumerated)."""
    return Topology(config)


def _plain(obj: object) -> dict:
    """A dataclass as plain data, field by field, so a new field reaches the JSON by itself."""
    out = {}
    for f in fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, range):
            value = _span(value)
        elif isinstance(value, tuple):
            value = list(value)
        elif hasattr(value, "to_dict"):
            value = value.to_dict()
        out[f.name] = value
    return out


def _span(r: range) -> list[int]:
    """A contiguous range as [start, stop) for tables and JSON."""
    return [r.start, r.stop]
