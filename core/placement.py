"""What each rank holds: its expert ids, its pipeline layers, its head and vocab shards.

All closed-form, so a rank's share is computed without looking at any other rank.
"""

from __future__ import annotations

from dataclasses import dataclass

STRATEGIES = ("linear", "round_robin")


@dataclass(frozen=True)
class ExpertPlacement:
    """Experts of each MoE layer spread over an EP group of `ep_size` ranks.

    linear: rank i holds a contiguous block; the first `num_experts % ep_size` ranks hold one
    extra. round_robin: rank i holds every expert e with e % ep_size == i.
    """

    num_experts: int
    ep_size: int
    strategy: str = "linear"

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown expert placement strategy {self.strategy!r}; "
                             f"use {' or '.join(STRATEGIES)}")
        if self.ep_size < 1 or self.num_experts < 0:
            raise ValueError(f"need ep_size >= 1 and num_experts >= 0, got ep_size="
                             f"{self.ep_size}, num_experts={self.num_experts}")

    def experts_of(self, ep_rank: int) -> tuple[int, ...]:
        n, e = self.ep_size, self.num_experts
        if not 0 <= ep_rank < n:
            raise IndexError(f"EP rank {ep_rank} is outside the EP group (0..{n - 1})")
        if self.strategy == "round_robin":
            return tuple(range(ep_rank, e, n))
        base, extra = divmod(e, n)
        start = ep_rank * base + min(ep_rank, extra)
        return tuple(range(start, start + base + (ep_rank < extra)))

    def owner_of(self, expert: int) -> int:
        """EP rank that holds `expert`."""
        n, e = self.ep_size, self.num_experts
        if not 0 <= expert < e:
            raise IndexError(f"expert {expert} does not exist (0..{e - 1})")
        if self.strategy == "round_robin":
            return expert % n
        base, extra = divmod(e, n)
        cut = extra * (base + 1)  # experts below `cut` live on the ranks with one extra
        return expert // (base + 1) if expert < cut else extra + (expert - cut) // base

    def local_index(self, expert: int) -> int:
        """Position of `expert` among the experts its owner holds (closed form)."""
        owner = self.owner_of(expert)
        if self.strategy == "round_robin":
            return expert // self.ep_size
        base, extra = divmod(self.num_experts, self.ep_size)
        return expert - (owner * base + min(owner, extra))

    def table(self) -> list[tuple[int, ...]]:
        return [self.experts_of(r) for r in range(self.ep_size)]


def split_evenly(total: int, parts: int) -> list[range]:
    """Cut range(total) into `parts` contiguous ranges; the first `total % parts` are one
    longer than the rest (callers rely on the longer ones coming first)."""
    base, extra = divmod(total, parts)
    sizes = [base + (i < extra) for i in range(parts)]
    out, start = [], 0
    for size in sizes:
        out.append(range(start, start + size))
        start += size
    return out


def layer_partition(num_layers: int, stages: int, explicit: tuple[int, ...] | None) -> list[range]:
    """Layers of each PP stage.

    With no explicit partition the split is even and the remainder goes to the earliest
    stages: the last stage also runs the final norm and LM head, so it gets the fewer layers.
    """
    if explicit is None:
        return split_evenly(num_layers, stages)
    out, start = [], 0
    for size in explicit:
        out.append(range(start, start + size))
        start += size
    return out


def head_shard(num_heads: int, tp_size: int, tp_rank: int) -> range:
    """Query heads of a TP rank (num_heads is divisible by tp_size)."""
    per = num_heads // tp_size
    return range(tp_rank * per, (tp_rank + 1) * per)


def mlp_shard(intermediate_size: int, tp_size: int, tp_rank: int) -> range:
    """MLP (and TP-sharded expert) columns of a TP rank: column-parallel up/gate projections,
    row-parallel down projection (intermediate_size is divisible by tp_size)."""
    return split_evenly(intermediate_size, tp_size)[tp_rank]


def kv_head_shard(num_kv_heads: int, tp_size: int, tp_rank: int) -> range:
    """KV heads a TP rank computes and caches.

    With at least as many KV heads as ranks each rank owns num_kv_heads / tp_size of them;
    with fewer, each KV head is replicated on tp_size / num_kv_heads consecutive ranks.
    """
    if num_kv_heads >= tp_size:
        per = num_kv_heads // tp_size
        return range(tp_rank * per, (tp_rank + 1) * per)
    head = tp_rank // (tp_size // num_kv_heads)
    return range(head, head + 1)


def vocab_shard(vocab_size: int, tp_size: int, tp_rank: int) -> range:
    """Vocabulary rows of a TP rank's embedding / LM head shard (remainder to the first)."""
    return split_evenly(vocab_size, tp_size)[tp_rank]
