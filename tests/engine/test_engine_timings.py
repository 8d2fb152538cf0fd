"""Where a request's time went, as the engine reports it with its final output (queue,
prefill, decode: vLLM's phases), and the step counts and seconds its stats carry. The
engine's clock is a fake one that each non-empty step of the fake model advances by STEP_S,
so every figure is exact."""

from __future__ import annotations

import types

import pytest

from pypto_serving.engine import engine as engine_module
from pypto_serving.engine import request as request_module
from pypto_serving.engine.sampling_params import SamplingParams

STEP_S = 0.25  # binary-exact: sums of it compare with ==


@pytest.fixture
def clocked(make_engine, monkeypatch):
    """clocked(**engine kwargs) -> an engine whose time moves only with its steps."""
    now = [1000.0]
    fake = types.SimpleNamespace(monotonic=lambda: now[0], perf_counter=lambda: now[0])
    monkeypatch.setattr(engine_module, "time", fake)
    monkeypatch.setattr(request_module, "time", fake)

    def make(**kw):
        engine = make_engine(**kw)
        execute = engine.executor.execute

        def timed(plan):
            if plan.chunks:
                now[0] += STEP_S
            return execute(plan)
        engine.executor.execute = timed
        return engine
    return make


def _run(engine) -> dict:
    """Step until idle; each request's final output by rid."""
    finals = {}
    while engine.has_work:
        for out in engine.step():
            if out.finished:
                finals[out.rid] = out
    return finals


def test_the_phases_are_the_steps_each_request_waited_and_ran(clocked):
    # one sequence at a time: "b" waits in the queue while "a" runs all its steps
    engine = clocked(max_num_seqs=1, max_num_batched_tokens=4)
    for rid, prompt in (("a", b"12345678"), ("b", b"abcdefgh")):  # no shared prefix
        engine.add_request(rid, list(prompt), SamplingParams(max_tokens=3, ignore_eos=True))
    finals = _run(engine)
    # each: an 8-token prompt in chunks of 4 is two steps to the first token, then two
    # decode steps; "b" waits for all four of "a"'s
    assert finals["a"].timings == {"queue_s": 0.0, "prefill_s": 2 * STEP_S,
                                   "decode_s": 2 * STEP_S}
    assert finals["b"].timings == {"queue_s": 4 * STEP_S, "prefill_s": 2 * STEP_S,
                                   "decode_s": 2 * STEP_S}
    assert finals["a"].to_message()["timings"] == finals["a"].timings


def test_a_request_aborted_in_the_queue_reports_no_phase_it_never_reached(clocked):
    engine = clocked(max_num_seqs=1)
    engine.add_request("a", [1, 2, 3], SamplingParams(max_tokens=2, ignore_eos=True))
    out = engine.abort("a")
    assert out.finished and out.timings == {}
    engine.add_request("b", [1, 2, 3], SamplingParams(max_tokens=4, ignore_eos=True))
    first = engine.step()[0]
    assert not first.finished and first.timings is None and "timings" not in first.to_message()
    assert engine.abort("b").timings == {"queue_s": 0.0, "prefill_s": STEP_S, "decode_s": 0.0}


def test_stats_count_steps_by_kind_with_the_executors_seconds(clocked):
    engine = clocked(max_num_seqs=2, max_num_batched_tokens=4)
    engine.add_request("a", list(b"abcdef"), SamplingParams(max_tokens=4, ignore_eos=True))
    _run(engine)
    engine.step()  # idle: a dummy step, counted as neither
    stats = engine.stats()
    # prompt of 6 in chunks of 4: two prefill steps (the second gives the first token),
    # then three decode-only steps
    assert stats["steps"] == {"prefill": 2, "decode": 3}
    assert stats["step_seconds"] == {"prefill": 2 * STEP_S, "decode": 3 * STEP_S}
