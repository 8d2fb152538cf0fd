"""The router's HTTP API with the official openai client and raw httpx, over real sockets, in
front of EngineServer-protocol peers on real ZMQ."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import httpx
import openai
import pytest
from engine_peer import EnginePeer, expected_text
from prometheus_client.parser import text_string_to_metric_families
from router_harness import MODEL

PROMPT = "hello"
IDS = list(PROMPT.encode())


def client(url: str, key: str = "none") -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=20)


@pytest.fixture
def one(peers, make_router):
    peers.append(EnginePeer(0))
    r = make_router()
    r.add(peers[0])
    return r


def test_completion_text_and_usage(one):
    out = client(one.url).completions.create(model=MODEL, prompt=PROMPT, max_tokens=5)
    assert out.choices[0].text == expected_text(IDS, 5)
    assert out.choices[0].finish_reason == "length"
    assert out.object == "text_completion" and out.model == MODEL
    u = out.usage
    assert (u.prompt_tokens, u.completion_tokens, u.total_tokens) == (5, 5, 10)
    assert u.prompt_tokens_details.cached_tokens == 0
    again = client(one.url).completions.create(model=MODEL, prompt=PROMPT, max_tokens=2)
    assert again.usage.prompt_tokens_details.cached_tokens == 4  # one 4-token block held


def test_token_id_prompt(one):
    out = client(one.url).completions.create(model=MODEL, prompt=[7, 8, 9], max_tokens=3)
    assert out.choices[0].text == expected_text([7, 8, 9], 3)


def test_streaming_equals_non_streaming_and_ends_with_done(one):
    c = client(one.url)
    plain = c.completions.create(model=MODEL, prompt=PROMPT, max_tokens=6)
    chunks = list(c.completions.create(model=MODEL, prompt=PROMPT, max_tokens=6, stream=True,
                                       stream_options={"include_usage": True}))
    assert "".join(ch.choices[0].text for ch in chunks if ch.choices) == plain.choices[0].text
    assert chunks[-2].choices[0].finish_reason == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 6
    assert all(ch.usage is None for ch in chunks[:-1])
    with httpx.stream("POST", one.url + "/v1/completions", json={
            "model": MODEL, "prompt": PROMPT, "max_tokens": 2, "stream": True}) as resp:
        lines = [x for x in resp.iter_lines() if x]
    assert resp.headers["content-type"].startswith("text/event-stream")
    assert lines[-1] == "data: [DONE]"
    assert all("usage" not in json.loads(x[6:]) for x in lines[:-1])


def test_chat_plain_and_streamed(one):
    c = client(one.url)
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    prompt_ids = list(b"<|system|>\nbe brief\n<|user|>\nhi\n<|assistant|>\n")
    plain = c.chat.completions.create(model=MODEL, messages=msgs, max_tokens=4)
    assert plain.choices[0].message.role == "assistant"
    assert plain.choices[0].message.content == expected_text(prompt_ids, 4)
    assert plain.usage.prompt_tokens == len(prompt_ids)
    chunks = list(c.chat.completions.create(model=MODEL, messages=msgs, max_tokens=4,
                                            stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks) == \
        plain.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == "length"
    # no max_tokens: up to the context (128) minus the prompt
    whole = c.chat.completions.create(model=MODEL, messages=msgs)
    assert whole.usage.completion_tokens == 128 - len(prompt_ids)


def test_models_and_health(peers, make_router):
    r = make_router()
    assert httpx.get(r.url + "/health").status_code == 503
    models = client(r.url).models.list()
    assert [m.id for m in models.data] == [MODEL]
    peers.append(EnginePeer(0))
    r.add(peers[0])
    h = httpx.get(r.url + "/health")
    assert h.status_code == 200 and h.json()["replicas_ready"] == [0]


BAD = [
    ({"model": "gpt-4", "prompt": "x"}, "model"),
    ({"model": MODEL, "prompt": "x", "max_tokens": "5"}, "max_tokens"),
    ({"model": MODEL, "prompt": "x", "max_tokens": -1}, "max_tokens"),
    ({"model": MODEL, "prompt": "x", "max_tokens": 10**9}, "max_tokens"),
    ({"model": MODEL, "prompt": "x", "max_tokens": 200}, "max_tokens"),  # beyond context
    ({"model": MODEL, "prompt": "x" * 200}, "prompt"),
    ({"model": MODEL, "prompt": ""}, "prompt"),
    ({"model": MODEL, "prompt": [1, 300]}, "prompt"),
    ({"model": MODEL, "prompt": ["a", "b"]}, "prompt"),
    ({"model": MODEL, "prompt": "x", "temperature": "hot"}, "temperature"),
    ({"model": MODEL, "prompt": "x", "stream": "yes"}, "stream"),
    ({"model": MODEL, "prompt": "x", "n": 2}, "n"),
    ({"model": MODEL}, "prompt"),
    ({"model": 5, "prompt": "x"}, "model"),
]


@pytest.mark.parametrize("body,param", BAD, ids=[p for _, p in BAD])
def test_bad_completion_bodies_get_400_naming_the_field(one, body, param):
    resp = httpx.post(one.url + "/v1/completions", json=body)
    assert resp.status_code == 400, resp.text
    err = resp.json()["error"]
    assert err["param"] == param and param in err["message"]
    assert err["type"] == "invalid_request_error" and set(err) == {"message", "type", "param",
                                                                   "code"}


def test_malformed_json_oversized_body_and_the_server_keeps_serving(one):
    for body in (b"{not json", b"[1, 2]", b""):
        resp = httpx.post(one.url + "/v1/completions", content=body,
                          headers={"content-type": "application/json"})
        assert resp.status_code == 400, resp.text
        assert resp.json()["error"]["message"]
    big = httpx.post(one.url + "/v1/completions", json={"model": MODEL, "prompt": "x" * 5000})
    assert big.status_code == 413 and "max_request_bytes" in big.json()["error"]["message"]
    chat = httpx.post(one.url + "/v1/chat/completions", json={"model": MODEL, "messages": [
        {"role": "wizard", "content": "x"}]})
    assert chat.status_code == 400 and chat.json()["error"]["param"] == "messages.0.role"
    chat = httpx.post(one.url + "/v1/chat/completions", json={"model": MODEL, "messages": []})
    assert chat.status_code == 400 and chat.json()["error"]["param"] == "messages"
    assert httpx.get(one.url + "/nope").status_code == 404
    wrong = httpx.get(one.url + "/v1/completions")
    assert wrong.status_code == 405 and wrong.json()["error"]["message"]
    out = client(one.url).completions.create(model=MODEL, prompt=PROMPT, max_tokens=2)
    assert out.choices[0].text == expected_text(IDS, 2)
    assert len(one.ready_ids()) == 1


def test_api_key_guards_every_route_but_health(peers, make_router):
    peers.append(EnginePeer(0))
    r = make_router(api_key="s3cret")
    r.add(peers[0])
    with pytest.raises(openai.AuthenticationError):
        client(r.url, "wrong").completions.create(model=MODEL, prompt=PROMPT, max_tokens=1)
    for path in ("/v1/models", "/metrics"):
        assert httpx.get(r.url + path).status_code == 401
    assert httpx.post(r.url + "/v1/chat/completions", json={}).status_code == 401
    assert httpx.get(r.url + "/health").status_code == 200
    out = client(r.url, "s3cret").completions.create(model=MODEL, prompt=PROMPT, max_tokens=1)
    assert out.choices[0].text == expected_text(IDS, 1)


def test_metrics_parse_with_prometheus_parser(one):
    client(one.url).completions.create(model=MODEL, prompt=PROMPT, max_tokens=3)
    text = httpx.get(one.url + "/metrics").text
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    for name in ("pypto:num_requests_running", "pypto:num_requests_waiting",
                 "pypto:kv_cache_usage_perc", "pypto:prefix_cache_hits",
                 "pypto:prefix_cache_queries", "pypto:time_to_first_token_seconds",
                 "pypto:inter_token_latency_seconds", "pypto:e2e_request_latency_seconds",
                 "pypto:request_success"):
        assert name in fams, name
    success = [s for s in fams["pypto:request_success"].samples
               if s.name.endswith("_total")]
    assert success[0].labels == {"model_name": MODEL, "replica": "0",
                                 "finished_reason": "length"} and success[0].value == 1
    ttft = [s for s in fams["pypto:time_to_first_token_seconds"].samples
            if s.name.endswith("_count")]
    assert ttft[0].value == 1
    itl = [s for s in fams["pypto:inter_token_latency_seconds"].samples
           if s.name.endswith("_count")]
    assert itl[0].value == 2


def test_metrics_count_tokens_per_replica_and_refusals_by_status(one):
    c = client(one.url)
    c.completions.create(model=MODEL, prompt=PROMPT, max_tokens=3)
    c.completions.create(model=MODEL, prompt=PROMPT, max_tokens=2)
    for _ in range(2):  # refused on the completion route: counted, by status
        assert httpx.post(one.url + "/v1/completions", json={"model": "nope", "prompt": "x"}
                          ).status_code == 400
    fams = {f.name: f for f in text_string_to_metric_families(
        httpx.get(one.url + "/metrics").text)}

    def total(name: str, **labels: str) -> float:
        return sum(s.value for s in fams[name].samples if s.name == name + "_total"
                   and all(s.labels.get(k) == v for k, v in labels.items()))

    assert total("pypto:prompt_tokens", replica="0") == 2 * len(IDS)
    assert total("pypto:generation_tokens", replica="0") == 5
    assert total("pypto:request_success", replica="0", finished_reason="length") == 2
    assert total("pypto:request_errors", status="400") == 2


def test_concurrency_limit_answers_429(peers, make_router):
    peers.append(EnginePeer(0, step_s=0.08))  # 50 tokens: 4 s to send the second request in
    r = make_router(max_concurrent_requests=1)
    r.add(peers[0])
    with httpx.stream("POST", r.url + "/v1/completions", json={
            "model": MODEL, "prompt": PROMPT, "max_tokens": 50, "stream": True}) as s:
        lines = s.iter_lines()  # kept: a collected iterator closes the stream
        next(lines)
        resp = httpx.post(r.url + "/v1/completions", json={"model": MODEL, "prompt": "x"})
        assert resp.status_code == 429 and resp.json()["error"]["type"] == "rate_limit_error"
    out = client(r.url).completions.create(model=MODEL, prompt=PROMPT, max_tokens=1)
    assert out.choices[0].text == expected_text(IDS, 1)


def test_engine_refusal_goes_to_another_replica_then_429(peers, make_router):
    peers += [EnginePeer(0, reject={"code": 429, "message": "queue full"}), EnginePeer(1)]
    r = make_router("round_robin")
    r.add(peers[0])
    r.add(peers[1])
    for _ in range(3):
        out = client(r.url).completions.create(model=MODEL, prompt=PROMPT, max_tokens=1)
        assert out.choices[0].text == expected_text(IDS, 1)
    peers[1].reject = {"code": 429, "message": "queue full"}
    with pytest.raises(openai.RateLimitError):
        client(r.url).completions.create(model=MODEL, prompt=PROMPT, max_tokens=1)
    peers[1].reject = {"code": 400, "message": "prompt too long for the KV cache"}
    with pytest.raises(openai.BadRequestError, match="KV cache"):
        client(r.url).completions.create(model=MODEL, prompt=PROMPT, max_tokens=1)


def test_a_replica_killed_during_a_burst_loses_no_request(peers, make_router):
    # 20 steps of 50 ms: replica 0 is still decoding when the kill lands, even on a busy host
    peers += [EnginePeer(0, step_s=0.05), EnginePeer(1, step_s=0.05)]
    r = make_router("round_robin")
    r.add(peers[0])
    r.add(peers[1])
    c = client(r.url)
    results: dict[int, str] = {}
    errors: list[BaseException] = []

    def one(i: int) -> None:
        prompt = f"request {i:02d}"
        try:
            out = c.completions.create(model=MODEL, prompt=prompt, max_tokens=20)
            results[i] = out.choices[0].text
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    peers[0].wait(lambda: len(peers[0].requests) >= 4)  # the kill lands mid-burst
    peers[0].kill()
    for t in threads:
        t.join(30)
    assert not errors
    for i in range(16):
        assert results[i] == expected_text(list(f"request {i:02d}".encode()), 20)
    assert r.ready_ids() == [1]
    assert r.router.apps[0].state.metrics.retries.labels(MODEL)._value.get() >= 1


def test_a_stream_cut_by_a_dead_replica_ends_with_an_error_event(peers, make_router):
    peers.append(EnginePeer(0, step_s=0.04))  # 100 tokens: 4 s to kill it mid-stream
    r = make_router()
    r.add(peers[0])
    stream = client(r.url).completions.create(model=MODEL, prompt=PROMPT, max_tokens=100,
                                              stream=True)
    got = []
    with pytest.raises(openai.APIError, match="failed after streaming"):
        for chunk in stream:
            got.append(chunk.choices[0].text)
            if len(got) == 3:
                peers[0].kill()
    assert 3 <= len(got) < 100


def test_requests_wait_for_a_restarting_world_then_run(peers, make_router):
    r = make_router(hold_timeout_s=20)
    done = []
    t = threading.Thread(target=lambda: done.append(client(r.url).completions.create(
        model=MODEL, prompt=PROMPT, max_tokens=2).choices[0].text))
    t.start()
    r.wait(lambda: r.router.pool.in_flight == 1)
    peers.append(EnginePeer(0))
    r.add(peers[0], group=0)
    t.join(20)
    assert done == [expected_text(IDS, 2)]
    # the launcher says the world failed: out at once, back at the next ready
    r.router.loop.call_soon_threadsafe(r.router.pool.mark_group_down, 0, "failed")
    r.wait(lambda: r.ready_ids() == [])
    assert httpx.get(r.url + "/health").status_code == 503
    peers.append(EnginePeer(0))
    r.add(peers[1], group=0)
    assert client(r.url).completions.create(model=MODEL, prompt=PROMPT,
                                            max_tokens=2).choices[0].text == done[0]


def test_no_replica_within_the_hold_timeout_is_a_503(make_router):
    r = make_router(hold_timeout_s=0.3)
    resp = httpx.post(r.url + "/v1/completions", json={"model": MODEL, "prompt": "x"})
    assert resp.status_code == 503 and "no replica" in resp.json()["error"]["message"]


def test_a_client_that_leaves_aborts_its_request_on_the_replica(peers, make_router):
    peers.append(EnginePeer(0, step_s=0.02))
    r = make_router()
    r.add(peers[0])
    with httpx.stream("POST", r.url + "/v1/completions", json={
            "model": MODEL, "prompt": PROMPT, "max_tokens": 100, "stream": True}) as s:
        next(s.iter_lines())
    peers[0].wait(lambda: len(peers[0].aborted) == 1)
    # non-streaming: the client times out and closes its connection
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(r.url + "/v1/completions", json={"model": MODEL, "prompt": PROMPT,
                                                    "max_tokens": 100}, timeout=0.3)
    peers[0].wait(lambda: len(peers[0].aborted) == 2)
    assert not peers[0].requests


def test_policies_route_as_documented_end_to_end(peers, make_router):
    peers += [EnginePeer(0), EnginePeer(1)]
    rr = make_router("round_robin")
    for p in peers:
        rr.add(p)
    for i in range(6):
        client(rr.url).completions.create(model=MODEL, prompt=f"p{i}", max_tokens=1)
    assert len(peers[0].adds()) == len(peers[1].adds()) == 3

    sess = make_router("session")
    for p in peers:
        sess.add(p)
    before = [len(p.adds()) for p in peers]
    c = openai.OpenAI(base_url=sess.url + "/v1", api_key="x", max_retries=0,
                      default_headers={"X-Session-Id": "chat-42"})
    for i in range(5):
        c.completions.create(model=MODEL, prompt=f"turn {i}", max_tokens=1)
    grown = [len(p.adds()) - b for p, b in zip(peers, before, strict=True)]
    assert sorted(grown) == [0, 5]

    pa = make_router("prefix_aware")
    for p in peers:
        pa.add(p)
    system = "You are a helpful assistant. " * 2  # 56 bytes: 14 blocks of 4
    first = client(pa.url).completions.create(model=MODEL, prompt=system + "q0", max_tokens=1)
    before = [len(p.adds()) for p in peers]
    for i in range(1, 5):
        out = client(pa.url).completions.create(model=MODEL, prompt=system + f"q{i}",
                                                max_tokens=1)
        assert out.usage.prompt_tokens_details.cached_tokens >= 56
    grown = [len(p.adds()) - b for p, b in zip(peers, before, strict=True)]
    assert sorted(grown) == [0, 4]
    assert first.usage.prompt_tokens_details.cached_tokens == 0


def test_external_load_balance_gives_each_replica_its_own_port(peers, make_router):
    peers += [EnginePeer(0), EnginePeer(1)]
    r = make_router(external=2)
    for p in peers:
        r.add(p)
    urls = [ep.url for ep in r.router.endpoints]
    assert len(set(urls)) == 2
    for i, url in enumerate(urls):
        client(url).completions.create(model=MODEL, prompt=PROMPT, max_tokens=1)
        assert len(peers[i].adds()) == 1 and len(peers[1 - i].adds()) == i
        assert httpx.get(url + "/health").json()["replicas_ready"] == [i]


def test_importing_the_router_app_does_not_import_torch():
    code = ("import sys, pypto_serving.router.server, pypto_serving.router.app; "
            "sys.exit('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0
