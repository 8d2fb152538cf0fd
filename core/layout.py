"""The rank grid: named dimensions, rank <-> coordinates, and groups, all by arithmetic.

Dimensions are ordered outermost first (DP, PP, TP), so TP varies fastest and a TP group is
a run of contiguous ranks (one node). A group of kind K is the set of ranks that agree on
every dimension K does not span. Nothing here enumerates the world: a rank's coordinates,
its group's index and the group's members are computed from strides, so a million-rank
layout costs no more than a small one. Adding a dimension (context parallelism, say) is one
more entry in `dims` and one more entry in `GROUP_KINDS`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

# Which dimensions each group kind spans. EP spans DP x TP within one pipeline stage; a
# replica (the ranks of one DP index: its engine's leader and followers) spans PP x TP.
GROUP_KINDS: dict[str, tuple[str, ...]] = {
    "tp": ("tp",),
    "pp": ("pp",),
    "dp": ("dp",),
    "ep": ("dp", "tp"),
    "replica": ("pp", "tp"),
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
class _KindPlan:
    """Precomputed arithmetic for one group kind: (size, stride) of fixed and spanned dims."""

    fixed: tuple[tuple[int, int], ...]  # dims the group does not span, outermost first
    spanned: tuple[tuple[int, int], ...]  # dims it spans, outermost first
    group_size: int
    num_groups: int


@dataclass(frozen=True)
class Layout:
    """A DP x PP x TP grid of ranks (TP fastest)."""

    dp: int = 1
    pp: int = 1
    tp: int = 1

    def __post_init__(self) -> None:
        for name, size in self.dims:
            if not isinstance(size, int) or size < 1:
                raise ValueError(f"layout size {name}={size!r} must be an integer >= 1")
        strides, s = {}, 1
        for name, size in reversed(self.dims):
            strides[name] = s
            s *= size
        # Derived once; frozen dataclass, so set through object.__setattr__.
        object.__setattr__(self, "_strides", strides)
        object.__setattr__(self, "_plans", {})

    @property
    def dims(self) -> tuple[tuple[str, int], ...]:
        return (("dp", self.dp), ("pp", self.pp), ("tp", self.tp))

    @property
    def world_size(self) -> int:
        return self.dp * self.pp * self.tp

    def coords(self, rank: int) -> dict[str, int]:
        """{'dp': .., 'pp': .., 'tp': ..} of a rank."""
        self.check_rank(rank)
        return {name: rank // self._strides[name] % size for name, size in self.dims}

    def rank_of(self, **coords: int) -> int:
        return sum(coords[name] * self._strides[name] for name, _ in self.dims)

    def check_rank(self, rank: int) -> None:
        if not 0 <= rank < self.world_size:
            raise IndexError(f"rank {rank} is outside the world (0..{self.world_size - 1})")

    def spans(self, kind: str) -> tuple[str, ...]:
        try:
            return GROUP_KINDS[kind]
        except KeyError:
            raise UnknownGroupError(kind, list(GROUP_KINDS)) from None

    def _plan(self, kind: str) -> _KindPlan:
        plan = self._plans.get(kind)
        if plan is None:
            spans = self.spans(kind)
            fixed = tuple((n, self._strides[d]) for d, n in self.dims if d not in spans)
            spanned = tuple((n, self._strides[d]) for d, n in self.dims if d in spans)
            size = 1
            for n, _ in spanned:
                size *= n
            plan = self._plans[kind] = _KindPlan(fixed, spanned, size, self.world_size // size)
        return plan

    def group_size(self, kind: str) -> int:
        return self._plan(kind).group_size

    def num_groups(self, kind: str) -> int:
        return self._plan(kind).num_groups

    def group_index(self, kind: str, rank: int) -> int:
        """Index of the rank's group among groups of this kind (fixed coords, outermost first)."""
        self.check_rank(rank)
        index = 0
        for size, stride in self._plan(kind).fixed:
            index = index * size + rank // stride % size
        return index

    def rank_in_group(self, kind: str, rank: int) -> int:
        """Position of the rank in its group (spanned coords, outermost first)."""
        self.check_rank(rank)
        index = 0
        for size, stride in self._plan(kind).spanned:
            index = index * size + rank // stride % size
        return index

    def group_ranks(self, kind: str, index: int) -> tuple[int, ...]:
        """Members of group `index` of this kind, in ascending rank (= stage order for PP)."""
        plan = self._plan(kind)
        if not 0 <= index < plan.num_groups:
            raise IndexError(f"{kind} group {index} does not exist (0..{plan.num_groups - 1})")
        base, rest = 0, index
        for size, stride in reversed(plan.fixed):
            rest, c = divmod(rest, size)
            base += c * stride
        # Outer spanned dims give the starts; the innermost one is a strided run from each.
        *outer, (n, step) = plan.spanned
        starts = [base]
        for size, stride in outer:
            starts = [s + i * stride for s in starts for i in range(size)]
        if len(starts) == 1:
            return tuple(range(base, base + n * step, step))
        out: list[int] = []
        for s in starts:
            out.extend(range(s, s + n * step, step))
        return tuple(out)

    def iter_group_ranks(self, kind: str) -> Iterator[tuple[int, ...]]:
        """Members of every group of this kind, by index: `group_ranks` for each index, but
        with the shared offsets computed once (what enumerating a big world spends on)."""
        plan = self._plan(kind)
        offsets = [0]
        for size, stride in plan.spanned:
            offsets = [o + i * stride for o in offsets for i in range(size)]
        bases = [0]
        for size, stride in plan.fixed:
            bases = [b + i * stride for b in bases for i in range(size)]
        if len(offsets) == 1:  # a dimension of size 1 (PP 1, say): one rank per group
            for base in bases:
                yield (base,)
        elif len(plan.spanned) == 1:
            ((n, step),) = plan.spanned
            for base in bases:
                yield tuple(range(base, base + n * step, step))
        else:
            for base in bases:
                yield tuple(map(base.__add__, offsets))
