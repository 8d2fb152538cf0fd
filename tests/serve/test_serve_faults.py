"""`pypto serve` with DP 2 and no EP (each replica its own world), the session policy and an
API key: a replica SIGKILLed during a burst of non-streaming requests loses none of them and
rejoins after its restart; sessions stick, distinct sessions spread; the key is enforced."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter

import httpx
import openai
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

MODEL = "tiny-moe"
KEY = "test-key-123"


@pytest.fixture(scope="module")
def dp2(serve_factory):
    return serve_factory("-dp", "2", "--model-profile", "tiny-moe", "--policy", "session",
                         "--api-key", KEY, "--max-restarts", "2", replicas=2)


def client(url: str, **kw) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0, timeout=90, **kw)


def served_by(url: str) -> Counter:
    """Finished requests per replica, from /metrics."""
    text = httpx.get(url + "/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
    out: Counter = Counter()
    for fam in text_string_to_metric_families(text):
        if fam.name == "pypto:request_success":
            for s in fam.samples:
                if s.name.endswith("_total"):
                    out[s.labels["replica"]] += int(s.value)
    return out


def test_the_api_key_is_enforced_on_every_route_but_health(dp2):
    assert httpx.get(dp2.url + "/health").status_code == 200
    for path in ("/v1/models", "/metrics"):
        r = httpx.get(dp2.url + path)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=dp2.url + "/v1", api_key="wrong", max_retries=0
                      ).completions.create(model=MODEL, prompt="x", max_tokens=1)
    assert client(dp2.url).models.list().data[0].id == MODEL


def test_a_session_sticks_to_one_replica_and_sessions_spread(dp2):
    before = served_by(dp2.url)
    c = client(dp2.url, default_headers={"X-Session-Id": "conversation-1"})
    for turn in range(4):
        c.completions.create(model=MODEL, prompt=f"turn {turn}", max_tokens=2)
    grown = served_by(dp2.url) - before
    assert sorted(grown.values()) == [4], grown  # all four on one replica

    before = served_by(dp2.url)
    done = []

    def session(i: int) -> None:
        s = client(dp2.url, default_headers={"X-Session-Id": f"user-{i}"})
        done.append(s.completions.create(model=MODEL, prompt=f"hello {i}", max_tokens=24,
                                         extra_body={"ignore_eos": True}))

    threads = [threading.Thread(target=session, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(done) == 6
    grown = served_by(dp2.url) - before
    assert set(grown) == {"0", "1"}, grown  # new sessions go to the less loaded replica


def test_a_replica_killed_during_a_burst_loses_no_request_and_rejoins(dp2):
    c = client(dp2.url)
    # 320 tokens each: long enough that the kill lands while replica 0 is still decoding
    prompts = [f"request number {i}" for i in range(12)]
    expected = {p: c.completions.create(model=MODEL, prompt=p, max_tokens=320, temperature=0,
                                        extra_body={"ignore_eos": True}).choices[0].text
                for p in prompts[:2]}
    leader = dp2.worker_pids()[0]
    results: dict[str, str] = {}
    errors: list[BaseException] = []

    def one(p: str) -> None:
        try:
            results[p] = c.completions.create(model=MODEL, prompt=p, max_tokens=320,
                                              temperature=0, extra_body={"ignore_eos": True}
                                              ).choices[0].text
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=one, args=(p,)) for p in prompts]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    # /metrics is the observable. Two or more running: the burst, not a stale count of the
    # one request before it; and a replica sends a step's tokens before the stats that
    # follow it, so the router has seen output of those requests
    while time.monotonic() < deadline and not _running_on(dp2.url, "0", at_least=2):
        time.sleep(0.02)
    os.kill(leader, signal.SIGKILL)
    out_at = dp2.expect(r"replica 0 out of rotation", timeout=30)
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert sorted(results) == sorted(prompts)
    for p, text in expected.items():
        assert results[p] == text
    assert all(len(t) > 0 for t in results.values())
    assert out_at
    assert _retries(dp2.url) >= 1  # requests were in flight on the killed replica

    ready = dp2.expect(r"group 0 .*ready \(attempt 1\)", timeout=120)
    ready_at = dp2.times[-1]
    dp2.expect(r"replica 0 in rotation", timeout=10)
    assert dp2.times[-1] - ready_at < 2.0, "back in rotation within 2 s of ready"
    assert ready
    assert not psutil.pid_exists(leader) or psutil.Process(leader).status() == "zombie"


def test_ctrl_c_leaves_no_process(dp2):
    tree = dp2.tree()
    assert dp2.interrupt(timeout=90) == 0
    gone, alive = psutil.wait_procs(tree, timeout=10)
    assert not alive, [p.pid for p in alive]


def _running_on(url: str, replica: str, at_least: int = 1) -> bool:
    text = httpx.get(url + "/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
    for fam in text_string_to_metric_families(text):
        if fam.name == "pypto:num_requests_running":
            return any(s.labels["replica"] == replica and s.value >= at_least
                       for s in fam.samples)
    return False


def _retries(url: str) -> float:
    text = httpx.get(url + "/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
    return sum(s.value for fam in text_string_to_metric_families(text)
               if fam.name == "pypto:request_retries" for s in fam.samples
               if s.name.endswith("_total"))
