"""Continuous batching through the Engine over the paged fake model: the step mix, chunked
prefill, preemption, the prefix cache, eviction, aborts and admission."""

from __future__ import annotations

import pytest
from engine_fakes import reference_tokens

from pypto_serving.engine.errors import RequestRejected
from pypto_serving.engine.sampling_params import SamplingParams

GREEDY = SamplingParams(max_tokens=12, ignore_eos=True)


def prompt(seed: int, n: int) -> list[int]:
    return [(seed * 31 + i * 7) % 256 for i in range(n)]


def collect(got: dict[str, dict], outputs) -> None:
    for out in outputs:
        g = got.setdefault(out.rid, {"tokens": [], "text": ""})
        g["tokens"] += out.token_ids
        g["text"] += out.text
        if out.finished:
            g["final"] = out


def run(engine, max_steps: int = 2000, got: dict | None = None) -> dict[str, dict]:
    """Step until idle; per rid: all token ids, text, the final output."""
    got = {} if got is None else got
    for _ in range(max_steps):
        if not engine.has_work:
            break
        collect(got, engine.step())
        engine.block_manager.check()
    assert not engine.has_work, "engine did not finish"
    return got


def test_decodes_and_prefill_chunks_share_a_step_under_the_budget(make_engine):
    engine = make_engine(max_num_batched_tokens=16, max_num_seqs=4)
    for i in range(3):
        engine.add_request(f"s{i}", prompt(i, 5), GREEDY)
    got: dict[str, dict] = {}
    collect(got, engine.step())  # the three short prompts prefill together (15 tokens)
    assert engine.executor.steps[-1] == [(i, 0, 5, True) for i in range(3)]
    long = prompt(9, 40)
    engine.add_request("long", long, GREEDY)
    collect(got, engine.step())
    # Three decodes first, then the long prompt's first chunk with the 13 tokens left.
    assert engine.executor.steps[-1] == [(0, 5, 1, True), (1, 5, 1, True), (2, 5, 1, True),
                                         (3, 0, 13, False)]
    run(engine, got=got)
    for step in engine.executor.steps:
        assert sum(n for _, _, n, _ in step) <= 16
        assert len(step) <= 4
    # The long prompt was prefilled over several steps while every short request decoded.
    long_chunks = [c for step in engine.executor.steps for c in step if c[0] == 3]
    assert [c[2] for c in long_chunks[:4]] == [13, 13, 13, 1]
    assert long_chunks[3][3] is True  # its last chunk samples
    for i in range(3):
        assert got[f"s{i}"]["tokens"] == reference_tokens(prompt(i, 5), 12)
    assert got["long"]["tokens"] == reference_tokens(long, 12)


def test_a_long_prompt_is_prefilled_in_chunks(make_engine):
    engine = make_engine(max_num_batched_tokens=32)
    p = prompt(1, 100)
    engine.add_request("a", p, SamplingParams(max_tokens=3, ignore_eos=True))
    got = run(engine)
    assert engine.executor.steps[:4] == [[(0, 0, 32, False)], [(0, 32, 32, False)],
                                         [(0, 64, 32, False)], [(0, 96, 4, True)]]
    assert got["a"]["tokens"] == reference_tokens(p, 3)
    final = got["a"]["final"]
    assert (final.finish_reason, final.prompt_tokens, final.completion_tokens) == ("length",
                                                                                  100, 3)


def test_max_num_seqs_caps_the_batch(make_engine):
    engine = make_engine(max_num_seqs=2, max_num_batched_tokens=64)
    for i in range(5):
        engine.add_request(f"r{i}", prompt(i, 3), GREEDY)
    got: dict[str, dict] = {}
    collect(got, engine.step())
    assert engine.stats()["running"] == 2 and engine.stats()["waiting"] == 3
    run(engine, got=got)
    assert max(len(s) for s in engine.executor.steps) == 2
    assert all(got[f"r{i}"]["tokens"] == reference_tokens(prompt(i, 3), 12) for i in range(5))


def test_preemption_in_a_tiny_pool_keeps_outputs_and_leaks_no_block(make_engine):
    prompts = [prompt(i, 9 + i) for i in range(6)]
    params = [SamplingParams(max_tokens=20, ignore_eos=True),
              SamplingParams(max_tokens=20, temperature=0.8, seed=5, ignore_eos=True)]
    results = {}
    for num_blocks in (256, 12):  # unconstrained, then 48 tokens for 6 x ~30
        engine = make_engine(num_blocks=num_blocks, block_size=4, max_num_batched_tokens=32)
        for i, p in enumerate(prompts):
            engine.add_request(f"r{i}", p, params[i % 2])
        results[num_blocks] = run(engine)
        bm = engine.block_manager
        assert bm.num_free == bm.num_blocks and set(bm.pool.ref_counts) == {0}
        bm.check()
        if num_blocks == 12:
            assert engine.stats()["num_preemptions"] > 0
    for i, p in enumerate(prompts):
        big, tiny = results[256][f"r{i}"], results[12][f"r{i}"]
        assert tiny["tokens"] == big["tokens"] and tiny["text"] == big["text"]
        seed = params[i % 2].seed
        assert big["tokens"] == reference_tokens(p, 20, seed=seed)


def test_shared_prefixes_skip_prefill_of_cached_blocks(make_engine):
    engine = make_engine(block_size=4, max_num_batched_tokens=64)
    system = prompt(3, 40)
    engine.add_request("first", system + [1, 2, 3], GREEDY)
    first = run(engine)
    engine.executor.steps.clear()
    engine.add_request("second", system + [9, 9], GREEDY)
    second = run(engine)
    # 40 tokens = 10 full blocks came from the cache; the first chunk starts at position 40.
    assert engine.executor.steps[0] == [(1, 40, 2, True)]
    assert second["second"]["final"].cached_tokens == 40
    assert first["first"]["final"].cached_tokens == 0
    assert second["second"]["tokens"] == reference_tokens(system + [9, 9], 12)
    stats = engine.stats()
    assert stats["prefix_hits"] == 40 and stats["prefix_queries"] == 43 + 42


def test_eviction_under_pressure_keeps_results_right(make_engine):
    engine = make_engine(num_blocks=16, block_size=4, max_num_batched_tokens=64)
    first = prompt(0, 20)
    engine.add_request("a", first, GREEDY)
    run(engine)
    stored, _ = engine.drain_kv_events()
    assert len(stored) == 7  # (20 prompt + 11 computed output tokens) // 4 full blocks
    for i in range(1, 4):  # distinct prompts push a's blocks out
        engine.add_request(f"b{i}", prompt(i, 20), GREEDY)
        run(engine)
    _, evicted = engine.drain_kv_events()
    assert set(stored) & set(evicted)
    engine.add_request("again", first, GREEDY)
    got = run(engine)
    assert got["again"]["tokens"] == reference_tokens(first, 12)
    assert got["again"]["final"].cached_tokens < 20
    engine.block_manager.check()


def test_abort_mid_decode_frees_its_blocks_and_others_go_on(make_engine):
    engine = make_engine(num_blocks=32, block_size=4)
    engine.add_request("keep", prompt(1, 6), GREEDY)
    engine.add_request("drop", prompt(2, 6), SamplingParams(max_tokens=50, ignore_eos=True))
    for _ in range(4):
        engine.step()
    held = len(engine.block_manager.block_table(engine.request("drop").seq_id))
    used = engine.block_manager.num_used
    out = engine.abort("drop")
    assert out.finished and out.finish_reason == "abort" and out.completion_tokens == 4
    assert engine.block_manager.num_used == used - held
    assert engine.abort("drop") is None
    got = run(engine)
    assert got["keep"]["tokens"][-8:] == reference_tokens(prompt(1, 6), 12)[-8:]
    assert engine.block_manager.num_used == 0


def test_impossible_requests_are_refused_naming_the_limit(make_engine):
    engine = make_engine(num_blocks=8, block_size=4, max_model_len=64)
    engine.add_request("ok", prompt(1, 5), GREEDY)
    with pytest.raises(RequestRejected, match="max_model_len=64"):
        engine.add_request("long", prompt(2, 60), SamplingParams(max_tokens=10))
    with pytest.raises(RequestRejected, match=r"whole KV cache of 32 tokens \(8 blocks x 4\)"):
        engine.add_request("big", prompt(2, 30), SamplingParams(max_tokens=10))
    with pytest.raises(RequestRejected, match="prompt is empty"):
        engine.add_request("empty", [], GREEDY)
    with pytest.raises(RequestRejected, match="token ids 0..255"):
        engine.add_request("bad", [1, 300], GREEDY)
    with pytest.raises(RequestRejected, match="top_p"):
        engine.add_request("bad", [1], SamplingParams(top_p=0.0))
    with pytest.raises(RequestRejected, match="at most 32 strings of at most 512"):
        engine.add_request("bad", [1], SamplingParams(stop=("x" * 600,)))
    with pytest.raises(RequestRejected, match="already in this engine"):
        engine.add_request("ok", [1], GREEDY)
    got = run(engine)
    assert got["ok"]["tokens"] == reference_tokens(prompt(1, 5), 12)
    assert engine.stats()["waiting"] == 0


def test_stats_count_pending_tokens(make_engine):
    engine = make_engine(max_num_batched_tokens=8)
    engine.add_request("a", prompt(1, 20), SamplingParams(max_tokens=5, ignore_eos=True))
    engine.add_request("b", prompt(2, 4), SamplingParams(max_tokens=3, ignore_eos=True))
    assert engine.stats()["pending_tokens"] == 20 + 5 + 4 + 3
    engine.step()  # a's first chunk of 8
    s = engine.stats()
    assert s["pending_tokens"] == 12 + 5 + 4 + 3 and s["running"] == 1 and s["waiting"] == 1
    assert s["kv_blocks_total"] == 64 and s["kv_blocks_free"] == 62
    assert s["kv_usage"] == pytest.approx(2 / 64)


def test_the_latest_admitted_request_is_preempted_to_the_front_of_the_queue(make_engine):
    engine = make_engine(num_blocks=6, block_size=4, max_num_batched_tokens=64)
    long = SamplingParams(max_tokens=12, ignore_eos=True)
    for i, rid in enumerate(("first", "second", "third")):
        engine.add_request(rid, prompt(i, 7), long)
    engine.add_request("fourth", prompt(9, 3), long)
    sched = engine.scheduler
    engine.step()  # 6 blocks: the first three are admitted (2 blocks each), fourth waits
    assert [r.rid for r in sched.running] == ["first", "second", "third"]
    while not engine.stats()["num_preemptions"]:
        engine.step()
    third = engine.request("third")
    assert third.state.value == "preempted" and third.num_computed_tokens == 0
    assert not engine.block_manager.holds(third.seq_id)
    assert [r.rid for r in sched.waiting] == ["third", "fourth"]
    assert [r.rid for r in sched.running] == ["first", "second"]
    got = run(engine)
    for i, rid in enumerate(("first", "second", "third")):
        assert got[rid]["tokens"][-4:] == reference_tokens(prompt(i, 7), 12)[-4:]
    assert got["fourth"]["tokens"] == reference_tokens(prompt(9, 3), 12)
