"""Routing policies: given the ready replicas' loads and cached prefixes, pick one.

Each policy is a small object with `choose(candidates, request) -> replica id`. The pool builds
the candidates (ready replicas only, never an empty list) from the replicas' stats plus the
router's own in-flight accounting, so a policy is a pure decision that unit tests drive
directly.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

POLICIES = ("least_loaded", "round_robin", "power_of_two", "prefix_aware", "session")


@dataclass(frozen=True)
class Candidate:
    """A ready replica as a policy sees it."""

    replica: int
    pending_tokens: int = 0
    """Prompt tokens not yet prefilled plus tokens still to decode (its load)."""
    pending_requests: int = 0
    """Requests running or waiting on it."""
    cached_blocks: int = 0
    """Leading blocks of this request's prompt the replica holds in its prefix cache."""


@dataclass(frozen=True)
class RouteRequest:
    """What a policy may know of a request."""

    prompt_tokens: int = 0
    session_id: str | None = None
    block_hashes: tuple[int, ...] = field(default=(), repr=False)


class Policy(Protocol):
    name: str

    def choose(self, candidates: Sequence[Candidate], request: RouteRequest) -> int: ...


def least_loaded_of(candidates: Sequence[Candidate]) -> Candidate:
    """Fewest pending tokens; then fewest requests; then the lowest replica id."""
    return min(candidates, key=lambda c: (c.pending_tokens, c.pending_requests, c.replica))


class LeastLoaded:
    """The replica with the fewest pending tokens (PyPTO Serving's least_pending_tokens)."""

    name = "least_loaded"

    def choose(self, candidates: Sequence[Candidate], request: RouteRequest) -> int:
        return least_loaded_of(candidates).replica


class RoundRobin:
    """Cycle over the ready replicas in id order; a replica that leaves is skipped."""

    name = "round_robin"

    def __init__(self) -> None:
        self._last = -1

    def choose(self, candidates: Sequence[Candidate], request: RouteRequest) -> int:
        ids = sorted(c.replica for c in candidates)
        nxt = next((r for r in ids if r > self._last), ids[0])
        self._last = nxt
        return nxt


class PowerOfTwo:
    """Two replicas drawn at random; the less loaded of them."""

    name = "power_of_two"

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()

    def choose(self, candidates: Sequence[Candidate], request: RouteRequest) -> int:
        if len(candidates) == 1:
            return candidates[0].replica
        return least_loaded_of(self._rng.sample(list(candidates), 2)).replica


HOME_BLOCKS = 4
"""Blocks that name a prefix for PrefixAware's homes (64 tokens at block size 16): deep enough
that prompts sharing only a chat template's header are different prefixes."""


def prefix_key(hashes: Sequence[int]) -> int | None:
    """The chained hash of a prompt's first HOME_BLOCKS blocks (None without a full block)."""
    return hashes[min(len(hashes), HOME_BLOCKS) - 1] if hashes else None


class PrefixAware:
    """The replica holding the longest cached prefix of the prompt (least-loaded among ties).

    Load guard (SGLang's cache_aware rule, with its defaults): when the busiest and the idlest
    replica differ by more than `abs_threshold` pending requests and the busiest has more than
    `rel_threshold` times the idlest's, affinity gives way and the least-loaded replica is
    chosen, so a hot prefix never piles every request onto one replica.

    A prompt that no replica holds any of goes to its prefix's home. Each prefix (the hash of
    its first HOME_BLOCKS blocks, or of all of them when shorter) is given a home when first
    seen: the replica that is home to the fewest prefixes (least-loaded among those). It keeps
    it while that replica is ready, even after the replica evicted it. So the set of prefixes
    is spread evenly and each replica's cache holds its share, instead of every cold prefix
    landing on whichever replica is idlest at that moment (which leaves one replica's cache
    over-full and thrashing). The home follows the replica the prefix was last sent to.
    """

    name = "prefix_aware"

    def __init__(self, abs_threshold: int = 64, rel_threshold: float = 1.5,
                 max_prefixes: int = 65_536) -> None:
        self.abs_threshold = abs_threshold
        self.rel_threshold = rel_threshold
        self.max_prefixes = max_prefixes
        self._homes: OrderedDict[int, int] = OrderedDict()
        """Prefix key (prefix_key) -> home replica, least recently routed first."""
        self._homed: dict[int, int] = {}
        """Replica -> how many prefixes call it home."""

    def imbalanced(self, candidates: Sequence[Candidate]) -> bool:
        loads = [c.pending_requests for c in candidates]
        hi, lo = max(loads), min(loads)
        return hi - lo > self.abs_threshold and hi > self.rel_threshold * lo

    def choose(self, candidates: Sequence[Candidate], request: RouteRequest) -> int:
        if self.imbalanced(candidates):  # a load decision: the prefix keeps its home
            return least_loaded_of(candidates).replica
        root = prefix_key(request.block_hashes)
        best = max(c.cached_blocks for c in candidates)
        if best > 0 or root is None:
            chosen = least_loaded_of([c for c in candidates if c.cached_blocks == best]).replica
        else:
            chosen = self._home_of(root, candidates)
        if root is not None:
            self._set_home(root, chosen)
        return chosen

    def home(self, hashes: Sequence[int]) -> int | None:
        """The home replica of the prefix of a prompt with these block hashes, if any."""
        key = prefix_key(hashes)
        return None if key is None else self._homes.get(key)

    def _home_of(self, root: int, candidates: Sequence[Candidate]) -> int:
        home = self._homes.get(root)
        if home is not None and any(c.replica == home for c in candidates):
            return home
        homed = self._homed
        return min(candidates, key=lambda c: (homed.get(c.replica, 0), c.pending_tokens,
                                              c.pending_requests, c.replica)).replica

    def _set_home(self, root: int, replica: int) -> None:
        homes, homed = self._homes, self._homed
        old = homes.get(root)
        if old != replica:
            if old is not None:
                homed[old] -= 1
            homes[root] = replica
            homed[replica] = homed.get(replica, 0) + 1
        homes.move_to_end(root)
        while len(homes) > self.max_prefixes:
            _, gone = homes.popitem(last=False)
            homed[gone] -= 1


class Session:
    """Requests with one X-Session-Id stay on one replica while it is ready; the first request
    of a session (or one whose replica left) goes to the least-loaded replica and pins it.
    Requests without a session id are routed least-loaded."""

    name = "session"

    def __init__(self, max_sessions: int = 100_000) -> None:
        self.max_sessions = max_sessions
        self._pins: OrderedDict[str, int] = OrderedDict()

    def choose(self, candidates: Sequence[Candidate], request: RouteRequest) -> int:
        sid = request.session_id
        if sid is None:
            return least_loaded_of(candidates).replica
        pinned = self._pins.get(sid)
        if pinned is not None and any(c.replica == pinned for c in candidates):
            self._pins.move_to_end(sid)
            return pinned
        chosen = least_loaded_of(candidates).replica
        self._pins[sid] = chosen
        self._pins.move_to_end(sid)
        while len(self._pins) > self.max_sessions:
            self._pins.popitem(last=False)
        return chosen


class Pinned:
    """Always one replica: each port of `data_parallel_load_balance: external`."""

    def __init__(self, replica: int) -> None:
        self.replica = replica
        self.name = f"pinned:{replica}"

    def choose(self, candidates: Sequence[Candidate], request: RouteRequest) -> int:
        return self.replica


def make_policy(name: str, *, abs_threshold: int = 64, rel_threshold: float = 1.5,
                rng: random.Random | None = None) -> Policy:
    """The policy called `name` (one of POLICIES); ValueError names the choices otherwise."""
    if name == "least_loaded":
        return LeastLoaded()
    if name == "round_robin":
        return RoundRobin()
    if name == "power_of_two":
        return PowerOfTwo(rng)
    if name == "prefix_aware":
        return PrefixAware(abs_threshold, rel_threshold)
    if name == "session":
        return Session()
    raise ValueError(f"unknown routing policy {name!r}; choose one of {', '.join(POLICIES)}")
