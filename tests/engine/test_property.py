"""Property test: random request streams with random aborts, against the scheduler and the
block manager over the paged fake model. Never a leaked or double-freed block, never a step
without progress while work waits, every request that runs to its end gives the tokens of
the model run on it alone."""

from __future__ import annotations

from engine_fakes import FakeModelExecutor, reference_tokens
from hypothesis import HealthCheck, event, given, settings, target
from hypothesis import strategies as st

from pypto_serving.engine.engine import Engine
from pypto_serving.engine.errors import RequestRejected
from pypto_serving.engine.sampling_params import SamplingParams
from pypto_serving.engine.tokenizer import ByteTokenizer

token = st.integers(0, 255)
add = st.tuples(st.just("add"), st.integers(0, 2), st.lists(token, min_size=0, max_size=8),
                st.integers(0, 100), st.booleans(), st.sampled_from([None, 3]),
                st.integers(0, 9))
"""prefix, suffix, share of the pool left for max_tokens (%), ignore_eos, seed, and 0 for a
request too big for the pool."""
op = st.one_of(add, add, st.tuples(st.just("abort"), st.integers(0, 40)),
               st.tuples(st.just("step"), st.integers(1, 4)))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(block_size=st.sampled_from([1, 2, 4]), num_blocks=st.integers(4, 16),
       budget=st.integers(1, 12), max_seqs=st.integers(1, 6),
       prefixes=st.lists(st.lists(token, min_size=0, max_size=12), min_size=3, max_size=3),
       ops=st.lists(op, min_size=3, max_size=40))
def test_random_streams_never_leak_stall_or_change_tokens(block_size, num_blocks, budget,
                                                          max_seqs, prefixes, ops):
    capacity = num_blocks * block_size
    executor = FakeModelExecutor(num_blocks, block_size)
    engine = Engine(executor, num_blocks=num_blocks, block_size=block_size,
                    max_num_seqs=max_seqs, max_num_batched_tokens=budget,
                    max_model_len=capacity + 8, tokenizer=ByteTokenizer())
    bm = engine.block_manager
    added: dict[str, tuple[list[int], SamplingParams]] = {}
    tokens: dict[str, list[int]] = {}
    aborted: set[str] = set()
    finished: set[str] = set()

    def step() -> None:
        had_work = engine.has_work
        before = len(executor.steps)
        for out in engine.step():
            assert out.rid not in finished
            tokens[out.rid] += out.token_ids
            if out.finished:
                finished.add(out.rid)
        assert len(executor.steps) == before + 1  # exactly one execute per step
        if had_work:
            assert executor.steps[-1], "a step made no progress while work was waiting"
        bm.check()

    for n, action in enumerate(ops):
        if action[0] == "add":
            _, prefix, suffix, share, ignore_eos, seed, fits = action
            prompt = prefixes[prefix] + suffix
            room = capacity - len(prompt)
            max_tokens = max(1, share * room // 100) if fits else max(1, room + 1 + share % 5)
            sp = SamplingParams(max_tokens=max_tokens, ignore_eos=ignore_eos, seed=seed,
                                temperature=0.0 if seed is None else 1.0)
            rid = f"r{n}"
            try:
                engine.add_request(rid, prompt, sp)
            except RequestRejected as e:
                assert not prompt or len(prompt) + max_tokens > capacity, e
                limit = "max_model_len" if len(prompt) + max_tokens > capacity + 8 else "KV cache"
                assert ("empty" in str(e)) if not prompt else (limit in str(e))
                continue
            assert prompt and len(prompt) + max_tokens <= capacity
            added[rid], tokens[rid] = (prompt, sp), []
        elif action[0] == "abort":
            rids = sorted(added)
            if rids:
                rid = rids[action[1] % len(rids)]
                out = engine.abort(rid)
                if rid in finished:
                    assert out is None
                else:
                    assert out is not None and out.finish_reason == "abort"
                    aborted.add(rid)
                    finished.add(rid)
                bm.check()
        else:
            for _ in range(action[1]):
                step()

    limit = 10 * sum(len(p) + sp.max_tokens for p, sp in added.values()) + 10
    for _ in range(limit):
        if not engine.has_work:
            break
        step()
    assert not engine.has_work, "requests did not finish"
    assert finished == set(added)
    assert bm.num_used == 0 and set(bm.pool.ref_counts) <= {0}
    stats = engine.stats()
    assert stats["kv_blocks_free"] == num_blocks and stats["pending_tokens"] == 0
    # Steer the search towards the hard cases: preemptions and prefix hits.
    target(float(stats["num_preemptions"]), label="preemptions")
    target(float(stats["prefix_hits"]), label="prefix hits")
    event(f"preempted: {stats['num_preemptions'] > 0}")
    event(f"prefix hit: {stats['prefix_hits'] > 0}")
    event(f"aborted: {bool(aborted)}")
    for rid, (prompt, sp) in added.items():
        if rid in aborted:
            continue
        eos = None if sp.ignore_eos else 0
        assert tokens[rid] == reference_tokens(prompt, sp.max_tokens, seed=sp.seed, eos=eos)
