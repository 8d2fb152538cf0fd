"""Which replica holds which prefix blocks, known from the replicas' kv_events.

A replica reports every block hash it stores and evicts (engine.hashing's chained hashes), so
the longest cached prefix of a prompt on a replica is the number of its leading block hashes
that replica holds: exact, not guessed from text. Between routing a request and the events of
its blocks arriving, the blocks are noted as expected on the chosen replica for a short while,
so a burst of requests sharing a new prefix follows the first one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence

EXPECTED_TTL_S = 5.0
"""How long routed-but-unconfirmed blocks count as held (the events normally follow in ms)."""


class PrefixIndex:
    """Block hashes held per replica (confirmed by events, or expected after routing)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._held: dict[int, set[int]] = {}
        self._expected: dict[int, dict[int, float]] = {}
        self._clock = clock

    def apply_events(self, replica: int, stored: Iterable[int], evicted: Iterable[int]) -> None:
        held = self._held.setdefault(replica, set())
        expected = self._expected.get(replica, {})
        for h in stored:
            held.add(h)
            expected.pop(h, None)
        for h in evicted:
            held.discard(h)
            expected.pop(h, None)

    def expect(self, replica: int, hashes: Sequence[int]) -> None:
        """The blocks of a request just routed to `replica` (it will store them)."""
        until = self._clock() + EXPECTED_TTL_S
        expected = self._expected.setdefault(replica, {})
        held = self._held.get(replica, ())
        for h in hashes:
            if h not in held:
                expected[h] = until

    def forget(self, replica: int) -> None:
        """A replica that went down (its cache is gone; a restart starts empty)."""
        self._held.pop(replica, None)
        self._expected.pop(replica, None)

    def cached_blocks(self, replica: int, hashes: Sequence[int]) -> int:
        """Leading blocks of `hashes` that `replica` holds."""
        held = self._held.get(replica, ())
        expected = self._expected.get(replica)
        now = self._clock() if expected else 0.0
        n = 0
        for h in hashes:
            if h in held:
                n += 1
                continue
            if expected:
                until = expected.get(h)
                if until is not None:
                    if until >= now:
                        n += 1
                        continue
                    del expected[h]
            break
        return n

    def held_count(self, replica: int) -> int:
        return len(self._held.get(replica, ()))
