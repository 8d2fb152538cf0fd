"""`pypto serve` on the cpu-demo profile (DP 2 x TP 2 + EP: one world), with the official
openai client: answers equal the engine's own, streaming equals non-streaming, bad input is
refused without harm, /metrics parses, and Ctrl-C drains and leaves no process."""

from __future__ import annotations

import time

import httpx
import openai
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families
from serve_harness import engine_reply

MODEL = "tiny-moe"


@pytest.fixture(scope="module")
def demo(serve_factory):
    return serve_factory("--profile", "cpu-demo", replicas=2)


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=60)


def test_completions_equal_the_engines_output(demo):
    c = client(demo.url)
    prompt = "The quick brown fox"
    out = c.completions.create(model=MODEL, prompt=prompt, max_tokens=12, temperature=0)
    assert out.usage.prompt_tokens == len(prompt.encode())
    assert out.usage.completion_tokens == len(out.choices[0].text.encode("utf-8",
                                                                        "surrogatepass")) or \
        out.usage.completion_tokens <= 12
    greedy = {"max_tokens": 12, "temperature": 0.0, "ignore_eos": False}
    for endpoint in demo.endpoints.values():  # every replica holds the same weights
        assert engine_reply(endpoint, list(prompt.encode()), greedy) == out.choices[0].text


def test_streaming_equals_non_streaming_for_one_seed(demo):
    c = client(demo.url)
    args = {"model": MODEL, "max_tokens": 16, "temperature": 0.9, "seed": 1234}
    plain = c.completions.create(prompt="Once upon a time", **args)
    chunks = list(c.completions.create(prompt="Once upon a time", stream=True,
                                       stream_options={"include_usage": True}, **args))
    assert "".join(ch.choices[0].text for ch in chunks if ch.choices) == plain.choices[0].text
    assert chunks[-1].usage.completion_tokens == plain.usage.completion_tokens
    sampling = {"max_tokens": 16, "temperature": 0.9, "seed": 1234}
    assert engine_reply(demo.endpoints[0], list(b"Once upon a time"), sampling) == \
        plain.choices[0].text

    msgs = [{"role": "user", "content": "Say something"}]
    chat = c.chat.completions.create(messages=msgs, **args)
    streamed = c.chat.completions.create(messages=msgs, stream=True, **args)
    text = "".join(ch.choices[0].delta.content or "" for ch in streamed)
    assert text == chat.choices[0].message.content
    assert chat.choices[0].finish_reason in ("stop", "length")


def test_bad_input_is_refused_and_the_server_keeps_serving(demo):
    url = demo.url + "/v1/completions"
    cases = [
        ({"model": "gpt-4o", "prompt": "x"}, "model"),
        ({"model": MODEL, "prompt": "x", "max_tokens": "many"}, "max_tokens"),
        ({"model": MODEL, "prompt": "x", "max_tokens": -3}, "max_tokens"),
        ({"model": MODEL, "prompt": "x" * 600}, "prompt"),  # beyond the 512-token context
        ({"model": MODEL, "prompt": "x", "max_tokens": 100000}, "max_tokens"),
    ]
    for body, param in cases:
        r = httpx.post(url, json=body, timeout=30)
        assert r.status_code == 400, (body, r.text)
        assert r.json()["error"]["param"] == param
    r = httpx.post(url, content=b'{"model": "tiny-moe", "prompt": ', timeout=30,
                   headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    r = httpx.post(url, content=b"x" * (2 << 20), timeout=30)
    assert r.status_code == 413
    out = client(demo.url).completions.create(model=MODEL, prompt="still here", max_tokens=4)
    assert out.usage.completion_tokens >= 1
    assert httpx.get(demo.url + "/health").json()["replicas_ready"] == [0, 1]


def test_metrics_parse_and_name_every_replica(demo):
    client(demo.url).completions.create(model=MODEL, prompt="metrics", max_tokens=3)
    fams = {f.name: f for f in text_string_to_metric_families(
        httpx.get(demo.url + "/metrics").text)}
    running = fams["pypto:num_requests_running"]
    assert sorted(s.labels["replica"] for s in running.samples) == ["0", "1"]
    kv = [s.value for s in fams["pypto:kv_cache_usage_perc"].samples]
    assert all(0.0 <= v <= 1.0 for v in kv)
    queries = sum(s.value for s in fams["pypto:prefix_cache_queries"].samples)
    assert queries > 0
    e2e = [s for s in fams["pypto:e2e_request_latency_seconds"].samples
           if s.name.endswith("_count")]
    assert sum(s.value for s in e2e) >= 1

    def total(name: str, suffix: str, **labels: str) -> float:
        return sum(s.value for s in fams[name].samples if s.name == name + suffix
                   and all(s.labels.get(k) == v for k, v in labels.items()))

    # the engine's own account: each finished request's phases, and the steps it ran
    # (a request of 3 tokens: at least one prefill step and two decode steps somewhere)
    for phase in ("queue", "prefill", "decode"):
        name = f"pypto:request_{phase}_time_seconds"
        assert total(name, "_count") == total("pypto:e2e_request_latency_seconds", "_count")
    # (the step counts come with the replica's next stats, which may land just after the
    # answer: read again until then)
    deadline = time.monotonic() + 10
    while total("pypto:engine_steps", "_total", kind="decode") < 2 \
            and time.monotonic() < deadline:
        time.sleep(0.05)
        fams = {f.name: f for f in text_string_to_metric_families(
            httpx.get(demo.url + "/metrics").text)}
    assert total("pypto:engine_steps", "_total", kind="prefill") >= 1
    assert total("pypto:engine_steps", "_total", kind="decode") >= 2
    assert total("pypto:engine_step_seconds", "_total", kind="decode") > 0


def test_a_rank_killed_restarts_the_world_and_held_requests_complete(demo):
    """DP + EP is one world: a dead rank restarts every replica; requests in flight are
    held while no replica is ready and answered once the world is back."""
    import os
    import signal
    import threading

    c = client(demo.url)
    args = {"model": MODEL, "max_tokens": 24, "temperature": 0,
            "extra_body": {"ignore_eos": True}}
    want = c.completions.create(prompt="held request", **args).choices[0].text
    leaders = set(demo.worker_pids().values())
    siblings = psutil.Process(next(iter(leaders))).parent().children()
    victim = next(p for p in siblings if p.pid not in leaders)  # a rank that is no leader
    results, errors = [], []

    def one() -> None:
        try:
            results.append(c.completions.create(prompt="held request", **args)
                           .choices[0].text)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=one) for _ in range(4)]
    for t in threads:
        t.start()
    os.kill(victim.pid, signal.SIGKILL)
    demo.expect(r"group 0 .*failed", timeout=30)
    demo.expect(r"group 0 .*ready \(attempt 1\)", timeout=120)
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert results == [want] * 4


def test_ctrl_c_drains_the_stream_in_flight_and_leaves_no_process(demo):
    tree = demo.tree()
    assert len(tree) >= 5  # pypto serve + 4 ranks (and the launcher's helpers)
    stream = client(demo.url).completions.create(model=MODEL, prompt="drain me", stream=True,
                                                 max_tokens=48, temperature=0,
                                                 extra_body={"ignore_eos": True})
    chunks = iter(stream)
    first = next(chunks)
    rc_holder = []
    import threading
    t = threading.Thread(target=lambda: rc_holder.append(demo.interrupt(timeout=90)))
    t.start()
    demo.expect("draining in-flight requests", timeout=30)
    rest = list(chunks)
    assert rest[-1].choices[0].finish_reason == "length"
    text = first.choices[0].text + "".join(ch.choices[0].text for ch in rest)
    assert text  # the whole answer came through the drain
    t.join(90)
    assert rc_holder == [0]
    gone, alive = psutil.wait_procs(tree, timeout=10)
    assert not alive, [p.pid for p in alive]
