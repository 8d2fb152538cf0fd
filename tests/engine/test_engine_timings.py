"""Where a request's time went, as the engine reports it with its final output (queue,
prefill, decode: vLLM's phases), and the step counts and seconds its stats carry."""

from __future__ import annotations

from pypto_serving.engine.sampling_params import SamplingParams

STEP_S = 0.02  # the fake model's time per non-empty step


def _run(engine) -> dict:
    """Step until idle; each request's final output by rid."""
    finals = {}
    while engine.has_work:
        for out in engine.step():
            if out.finished:
                finals[out.rid] = out
    return finals


def test_the_phases_add_up_to_the_steps_each_request_waited_and_ran(make_engine):
    # one sequence at a time: "b" waits in the queue while "a" runs all its steps
    engine = make_engine(max_num_seqs=1, max_num_batched_tokens=4)
    engine.executor.step_s = STEP_S
    for rid, prompt in (("a", b"12345678"), ("b", b"abcdefgh")):  # no shared prefix
        engine.add_request(rid, list(prompt), SamplingParams(max_tokens=3, ignore_eos=True))
    finals = _run(engine)
    a, b = finals["a"].timings, finals["b"].timings
    assert set(a) == set(b) == {"queue_s", "prefill_s", "decode_s"}
    # "a": scheduled at once; an 8-token prompt in chunks of 4 is two steps to the first
    # token, then two decode steps (upper bounds loose: a loaded host oversleeps)
    assert a["queue_s"] < STEP_S
    assert 2 * STEP_S <= a["prefill_s"] < 10 * STEP_S
    assert 2 * STEP_S <= a["decode_s"] < 10 * STEP_S
    # "b" waited for all four of "a"'s steps, then ran the same
    assert b["queue_s"] >= 4 * STEP_S
    assert 2 * STEP_S <= b["prefill_s"] < 10 * STEP_S
    # the final message carries them; an output before the end does not
    assert finals["a"].to_message()["timings"] == a


def test_a_request_aborted_in_the_queue_reports_no_phase_it_never_reached(make_engine):
    engine = make_engine(max_num_seqs=1)
    engine.add_request("a", [1, 2, 3], SamplingParams(max_tokens=2, ignore_eos=True))
    out = engine.abort("a")
    assert out.finished and out.timings == {}
    engine.add_request("b", [1, 2, 3], SamplingParams(max_tokens=4, ignore_eos=True))
    first = engine.step()[0]
    assert not first.finished and first.timings is None and "timings" not in first.to_message()
    assert set(engine.abort("b").timings) == {"queue_s", "prefill_s", "decode_s"}


def test_stats_count_steps_by_kind_with_the_executors_seconds(make_engine):
    engine = make_engine(max_num_seqs=2, max_num_batched_tokens=4)
    engine.executor.step_s = STEP_S
    engine.add_request("a", list(b"abcdef"), SamplingParams(max_tokens=4, ignore_eos=True))
    _run(engine)
    engine.step()  # idle: a dummy step, counted as neither
    stats = engine.stats()
    # prompt of 6 in chunks of 4: two prefill steps (the second gives the first token),
    # then three decode-only steps
    assert stats["steps"] == {"prefill": 2, "decode": 3}
    assert 2 * STEP_S <= stats["step_seconds"]["prefill"] < 10 * STEP_S
    assert stats["step_seconds"]["decode"] >= 3 * STEP_S
