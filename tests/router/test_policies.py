"""The routing policies as objects: each picks the replica its documentation says."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from pypto_serving.router.policies import (
    POLICIES,
    Candidate,
    LeastLoaded,
    PowerOfTwo,
    PrefixAware,
    RoundRobin,
    RouteRequest,
    Session,
    make_policy,
    prefix_key,
)
from pypto_serving.router.prefix_index import PrefixIndex

REQ = RouteRequest()


def test_round_robin_cycles_and_skips_a_replica_that_left():
    p = RoundRobin()
    three = [Candidate(0), Candidate(1), Candidate(2)]
    assert [p.choose(three, REQ) for _ in range(6)] == [0, 1, 2, 0, 1, 2]
    without_1 = [Candidate(0), Candidate(2)]
    assert [p.choose(without_1, REQ) for _ in range(4)] == [0, 2, 0, 2]
    assert [p.choose(three, REQ) for _ in range(3)] == [0, 1, 2]


def test_least_loaded_weighs_pending_tokens_not_request_counts():
    # replica 0 runs one long request, replica 1 three short ones: 1 has fewer tokens pending
    cands = [Candidate(0, pending_tokens=900, pending_requests=1),
             Candidate(1, pending_tokens=60, pending_requests=3)]
    assert LeastLoaded().choose(cands, REQ) == 1


def test_least_loaded_breaks_ties_by_requests_then_id():
    cands = [Candidate(2, 10, 1), Candidate(1, 10, 0), Candidate(0, 10, 1)]
    assert LeastLoaded().choose(cands, REQ) == 1
    assert LeastLoaded().choose([Candidate(3, 5, 0), Candidate(2, 5, 0)], REQ) == 2


def test_power_of_two_picks_the_less_loaded_of_two_draws():
    cands = [Candidate(0, 100), Candidate(1, 10), Candidate(2, 50)]
    rng = random.Random(7)
    picks = Counter(PowerOfTwo(rng).choose(cands, REQ) for _ in range(600))
    # the busiest is never the less loaded of a pair; the idlest wins every pair it is in (2/3)
    assert picks[0] == 0
    assert 350 < picks[1] < 450
    assert PowerOfTwo().choose([Candidate(5)], REQ) == 5


def test_prefix_aware_prefers_the_longest_cached_prefix():
    cands = [Candidate(0, 10, 1, cached_blocks=1), Candidate(1, 50, 2, cached_blocks=4),
             Candidate(2, 0, 0, cached_blocks=0)]
    assert PrefixAware().choose(cands, REQ) == 1


def test_prefix_aware_ties_go_to_the_least_loaded():
    cands = [Candidate(0, 80, 3, cached_blocks=2), Candidate(1, 20, 1, cached_blocks=2),
             Candidate(2, 0, 0, cached_blocks=1)]
    assert PrefixAware().choose(cands, REQ) == 1
    nothing = [Candidate(0, 80, 3), Candidate(1, 20, 1)]
    assert PrefixAware().choose(nothing, REQ) == 1


def test_prefix_aware_load_guard_switches_to_least_loaded():
    # replica 0 holds the prefix but has 70 more requests (> 64) and > 1.5x the other's
    hot = [Candidate(0, 7000, 80, cached_blocks=8), Candidate(1, 100, 10, cached_blocks=0)]
    assert PrefixAware(64, 1.5).choose(hot, REQ) == 1
    # a gap of 70 requests but a ratio under 1.5: affinity holds
    close = [Candidate(0, 7000, 200, cached_blocks=8), Candidate(1, 100, 140, cached_blocks=0)]
    assert PrefixAware(64, 1.5).choose(close, REQ) == 0
    # tighter thresholds from the config trip earlier
    small = [Candidate(0, 70, 5, cached_blocks=8), Candidate(1, 10, 1, cached_blocks=0)]
    assert PrefixAware(64, 1.5).choose(small, REQ) == 0
    assert PrefixAware(2, 1.5).choose(small, REQ) == 1


def prompt(prefix: int, *rest: int) -> RouteRequest:
    """A request whose prompt starts with a four-block prefix named `prefix` (block hashes
    prefix*10 .. prefix*10+3), then blocks `rest`."""
    blocks = (*range(prefix * 10, prefix * 10 + 4), *rest)
    return RouteRequest(16 * len(blocks), block_hashes=blocks)


def home(p: PrefixAware, prefix: int) -> int | None:
    return p.home(prompt(prefix).block_hashes)


def test_prefix_aware_spreads_cold_prefixes_over_the_replicas():
    # replica 0 is idler: least-loaded alone would put every new prefix there
    p = PrefixAware()
    cands = [Candidate(0, 0, 0), Candidate(1, 50, 1)]
    picks = [p.choose(cands, prompt(k, 999)) for k in (1, 2, 3, 4, 5, 6)]
    assert sorted(picks) == [0, 0, 0, 1, 1, 1]
    assert picks[0] == 0  # the first goes to the least loaded of the (all empty) homes


def test_prefix_aware_sends_an_evicted_prefix_back_to_its_home():
    p = PrefixAware()
    cands = [Candidate(0), Candidate(1)]
    assert p.choose(cands, prompt(1)) == 0
    assert p.choose(cands, prompt(2)) == 1  # 2's home is 1
    # replica 1 evicted prefix 2 and is now the busier one: 2 still goes home
    busy_1 = [Candidate(0, 0, 0), Candidate(1, 500, 4)]
    assert p.choose(busy_1, prompt(2, 999)) == 1
    assert home(p, 2) == 1
    # its home left: the prefix is re-homed on a ready replica, and stays there after
    assert p.choose([Candidate(0)], prompt(2)) == 0
    assert p.choose(cands, prompt(2)) == 0 and home(p, 2) == 0


def test_prefix_aware_home_follows_the_cached_copy_but_not_the_load_guard():
    p = PrefixAware(abs_threshold=4, rel_threshold=1.5)
    assert p.choose([Candidate(0), Candidate(1)], prompt(7)) == 0
    # the prefix is cached on 1 only (say 0 evicted it): longest match wins, home moves to 1
    held_on_1 = [Candidate(0, 0, 0, cached_blocks=0), Candidate(1, 10, 1, cached_blocks=1)]
    assert p.choose(held_on_1, prompt(7)) == 1 and home(p, 7) == 1
    # the load guard sends one away: that is a load decision, the home stays
    hot_1 = [Candidate(0, 0, 0), Candidate(1, 900, 9, cached_blocks=1)]
    assert p.choose(hot_1, prompt(7)) == 0 and home(p, 7) == 1


def test_prefix_homes_are_bounded_and_keyed_deeper_than_a_template_header():
    p = PrefixAware(max_prefixes=2)
    for k in (1, 2, 3):
        p.choose([Candidate(0), Candidate(1)], prompt(k))
    assert home(p, 1) is None and home(p, 3) is not None
    # two prompts sharing only their first block (a chat header) are different prefixes
    assert prefix_key([5, 6, 7, 8, 9]) == 8 and prefix_key([5, 6]) == 6
    assert prefix_key([5, 61, 71, 81]) != prefix_key([5, 62, 72, 82])
    assert prefix_key([]) is None


def test_session_sticks_while_the_replica_is_ready_then_moves():
    p = Session()
    cands = [Candidate(0, 0), Candidate(1, 5)]
    a = RouteRequest(session_id="alice")
    assert p.choose(cands, a) == 0
    busy = [Candidate(0, 1000), Candidate(1, 5)]
    assert p.choose(busy, a) == 0  # sticks although 0 is now the busier one
    assert p.choose(busy, RouteRequest(session_id="bob")) == 1
    assert p.choose([Candidate(1, 5)], a) == 1  # 0 left: re-pinned to 1
    assert p.choose(busy, a) == 1  # and stays there when 0 is back
    assert p.choose(busy, REQ) == 1  # no session id: least loaded


def test_session_pins_are_bounded():
    p = Session(max_sessions=2)
    cands = [Candidate(0), Candidate(1)]
    for s in ("a", "b", "c"):
        p.choose(cands, RouteRequest(session_id=s))
    assert len(p._pins) == 2 and "a" not in p._pins


def test_make_policy_knows_every_documented_name_and_names_the_choices():
    for name in POLICIES:
        assert make_policy(name).name == name
    with pytest.raises(ValueError, match="least_loaded, round_robin"):
        make_policy("random")


def test_prefix_index_counts_leading_blocks_from_events():
    clock = [0.0]
    idx = PrefixIndex(clock=lambda: clock[0])
    idx.apply_events(0, stored=[11, 12, 13], evicted=[])
    assert idx.cached_blocks(0, [11, 12, 13, 14]) == 3
    assert idx.cached_blocks(0, [11, 99, 13]) == 1  # a prefix stops at the first miss
    assert idx.cached_blocks(1, [11]) == 0
    idx.apply_events(0, stored=[], evicted=[12])
    assert idx.cached_blocks(0, [11, 12, 13]) == 1
    idx.forget(0)
    assert idx.cached_blocks(0, [11]) == 0


def test_prefix_index_expected_blocks_count_until_confirmed_or_stale():
    clock = [0.0]
    idx = PrefixIndex(clock=lambda: clock[0])
    idx.expect(1, [21, 22])
    assert idx.cached_blocks(1, [21, 22, 23]) == 2
    idx.apply_events(1, stored=[21], evicted=[22])  # 22 evicted: no longer expected either
    assert idx.cached_blocks(1, [21, 22]) == 1
    idx.expect(2, [31])
    clock[0] = 100.0
    assert idx.cached_blocks(2, [31]) == 0
