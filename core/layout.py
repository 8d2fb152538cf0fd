"""The rank grid: named dimensions, rank <-> coordinates, and groups, all by arithmetic.

Dimensions are ordered outermost first (DP, PP, TP), so TP varies fastest and a TP group is
a run of contiguous ranks (one node). A group of kind K is the set of ranks that agree on
every dimension K does not span. Nothing here enumerates the world: a rank's coordinates,
its group's index and the group's members are computed from strides, so a million-rank
layout costs no more than a small one. Adding a dimension (context parallelism, say) is one
more entry in `dims` and one more entry in `GROUP_KINDS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import product

# Which dimensions each group kind spans. EP spans DP x TP within one pipeline stage.
GROUP_KINDS: dict[str, tuple[str, ...]] = {
    "tp": ("tp",),
    "pp": ("pp",),
    "dp": ("dp",),
    "ep": ("dp", "tp"),
    "world": ("dp", "pp", "tp"),
}


class UnknownGroupError(KeyError):
    """A group kind that this layout does not have."""

    def __init__(self, kind: str, known: list[str]):
        self.kind = kind
        super().__init__(f"unknown group kind {kind!r}; known kinds: {', '.join(known)}")

    def __str__(self) -> str:
        return self.args[0]


@dataclass(frozen=True)
class Layout:
    """A DP x PP x TP grid of ranks (TP fastest)."""

    dp: int = 1
    pp: int = 1
    tp: int = 1

    @property
    def dims(self) -> tuple[tuple[str, int], ...]:
        return (("dp", self.dp), ("pp", self.pp), ("tp", self.tp))

    @property
    def world_size(self) -> int:
        return self.dp * self.pp * self.tp

    def size(self, dim: str) -> int:
        return dict(self.dims)[dim]

    def stride(self, dim: str) -> int:
        s = 1
        for name, size in reversed(self.dims):
            if name == dim:
                return s
            s *= size
        raise UnknownGroupError(dim, [d for d, _ in self.dims])

    def coords(self, rank: int) -> dict[str, int]:
        """{'dp': .., 'pp': .., 'tp': ..} of a rank."""
        self.check_rank(rank)
        out: dict[str, int] = {}
        for name, size in reversed(self.dims):
            rank, out[name] = divmod(rank, size)
        return {name: out[name] for name, _ in self.dims}

    def rank_of(self, **coords: int) -> int:
        return sum(coords[name] * self.stride(name) for name, _ in self.dims)

    def check_rank(self, rank: int) -> None:
        if not 0 <= rank < self.world_size:
            raise IndexError(f"rank {rank} is outside the world (0..{self.world_size - 1})")

    def spans(self, kind: str) -> tuple[str, ...]:
        try:
            return GROUP_KINDS[kind]
        except KeyError:
            raise UnknownGroupError(kind, list(GROUP_KINDS)) from None

    def group_size(self, kind: str) -> int:
        n = 1
        for dim in self.spans(kind):
            n *= self.size(dim)
        return n

    def num_groups(self, kind: str) -> int:
        return self.world_size // self.group_size(kind)

    def group_index(self, kind: str, rank: int) -> int:
        """Index of the rank's group among groups of this kind (fixed coords, outermost first)."""
        spans, c = self.spans(kind), self.coords(rank)
        index = 0
        for name, size in self.dims:
            if name not in spans:
                index = index * size + c[name]
        return index

    def rank_in_group(self, kind: str, rank: int) -> int:
        """Position of the rank in its group (spanned coords, outermost first)."""
        spans, c = self.spans(kind), self.coords(rank)
        index = 0
        for name, size in self.dims:
            if name in spans:
                index = index * size + c[name]
        return index

    def group_ranks(self, kind: str, index: int) -> tuple[int, ...]:
        """Members of group `index` of this kind, in ascending rank (= stage order for PP)."""
        spans = self.spans(kind)
        if not 0 <= index < self.num_groups(kind):
            raise IndexError(f"{kind} group {index} does not exist (0..{self.num_groups(kind) - 1})")
        base, rest = 0, index
        for name, size in reversed(self.dims):
            if name not in spans:
                rest, c = divmod(rest, size)
                base += c * self.stride(name)
        ranges = [range(0, self.size(d) * self.stride(d), self.stride(d)) for d, _ in self.dims
                  if d in spans]
        if len(ranges) == 1:
            return tuple(range(base, base + ranges[0].stop, ranges[0].step))
        return tuple(base + sum(offsets) for offsets in product(*ranges))

    def group_of(self, kind: str, rank: int) -> tuple[int, ...]:
        return self.group_ranks(kind, self.group_index(kind, rank))
