"""ParallelContext: the group metadata a model runner receives, and nothing else.

Everything here is read from core's Topology / RankInfo (coordinates, layers, heads, KV
heads, experts, vocabulary shard) plus this rank's group coordinators. Runners shard,
prune and route by it; they compute no layout of their own.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..core.config import ModelSpec, ServingConfig
from ..core.placement import ExpertPlacement
from ..core.topology import KVCacheShard, RankInfo, Topology
from .comm import GroupCoordinator


@dataclass(frozen=True)
class ParallelContext:
    """One rank's place in the layout: what it holds and whom it talks to."""

    config: ServingConfig
    rank_info: RankInfo
    device: torch.device
    tp: GroupCoordinator
    pp: GroupCoordinator
    dp: GroupCoordinator
    world: GroupCoordinator
    replica: GroupCoordinator
    """The ranks of this DP replica (PP x TP); its first rank is the leader (the engine)."""
    ep: GroupCoordinator | None
    expert_placement: ExpertPlacement | None
    tp_vocab_shards: tuple[range, ...]
    """Vocabulary rows of every TP rank of this group, in TP order (for the logits gather)."""

    @classmethod
    def build(
        cls, topology: Topology, rank: int, groups: dict[str, GroupCoordinator],
        device: torch.device,
    ) -> ParallelContext:
        info = topology.rank_info(rank)
        tp = groups["tp"]
        return cls(
            config=topology.config,
            rank_info=info,
            device=device,
            tp=tp,
            pp=groups["pp"],
            dp=groups["dp"],
            world=groups["world"],
            replica=groups["replica"],
            ep=groups.get("ep"),
            expert_placement=topology.expert_placement,
            tp_vocab_shards=tuple(topology.rank_info(r).vocab for r in tp.ranks),
        )

    @property
    def model(self) -> ModelSpec:
        return self.config.model

    @property
    def rank(self) -> int:
        return self.rank_info.rank

    @property
    def layers(self) -> range:
        return self.rank_info.layers

    @property
    def attention_heads(self) -> range:
        return self.rank_info.attention_heads

    @property
    def mlp_columns(self) -> range:
        """This TP rank's slice of the SwiGLU width (dense MLP and, without EP, each expert)."""
        return self.rank_info.mlp_columns

    @property
    def kv_heads(self) -> range:
        return self.rank_info.kv_cache.kv_heads

    @property
    def kv_cache(self) -> KVCacheShard:
        return self.rank_info.kv_cache

    @property
    def experts(self) -> tuple[int, ...]:
        return self.rank_info.experts

    @property
    def vocab(self) -> range:
        return self.rank_info.vocab

    @property
    def is_first_stage(self) -> bool:
        return self.rank_info.is_first_stage

    @property
    def is_last_stage(self) -> bool:
        return self.rank_info.is_last_stage

    @property
    def is_replica_leader(self) -> bool:
        return self.replica.is_first_rank

    @property
    def expert_parallel(self) -> bool:
        return self.ep is not None

    @property
    def kv_block_size(self) -> int:
        return self.config.serve.kv_block_size
