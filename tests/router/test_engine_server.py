"""The router against the engine's real EngineServer (Engine + a pure-Python fake model from
tests/engine) over real ZMQ: the two ends of engine/protocol.py agree, tokens equal the
model's reference, prefix routing sees the engine's own kv_events, a client that leaves frees
its blocks."""

from __future__ import annotations

import threading

import httpx
import openai
import pytest
from engine_fakes import FakeModelExecutor, reference_tokens

from pypto_serving.engine.engine import Engine
from pypto_serving.engine.server import EngineServer
from pypto_serving.engine.tokenizer import ByteTokenizer

BLOCK = 4


class RealReplica:
    """An EngineServer on its own thread, as a replica leader runs it."""

    def __init__(self, replica: int, num_blocks: int = 256, step_s: float = 0.0) -> None:
        self.executor = FakeModelExecutor(num_blocks, BLOCK, step_s=step_s)
        self.engine = Engine(self.executor, num_blocks=num_blocks, block_size=BLOCK,
                             max_num_seqs=8, max_num_batched_tokens=256, max_model_len=128,
                             tokenizer=ByteTokenizer())
        self.server = EngineServer(self.engine, replica=replica, model_name="tiny")
        self.replica, self.endpoint = replica, self.server.endpoint
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.server.run, args=(self.stop,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)


@pytest.fixture
def replicas():
    made: list[RealReplica] = []
    yield made
    for r in made:
        r.close()


def text_of(tokens: list[int]) -> str:
    return ByteTokenizer().decode(tokens)


def test_answers_equal_the_models_reference_plain_and_streamed(replicas, make_router):
    replicas.append(RealReplica(0))
    r = make_router()
    r.add(replicas[0])
    c = openai.OpenAI(base_url=r.url + "/v1", api_key="x", max_retries=0, timeout=30)
    prompt = "abcdefghij"
    want = text_of(reference_tokens(list(prompt.encode()), 6))
    out = c.completions.create(model="tiny", prompt=prompt, max_tokens=6, temperature=0,
                               extra_body={"ignore_eos": True})
    assert out.choices[0].text == want
    chunks = list(c.completions.create(model="tiny", prompt=prompt, max_tokens=6,
                                       temperature=0, stream=True,
                                       extra_body={"ignore_eos": True},
                                       stream_options={"include_usage": True}))
    assert "".join(ch.choices[0].text for ch in chunks if ch.choices) == want
    # the second time the prompt's two full blocks came from the prefix cache
    assert chunks[-1].usage.prompt_tokens_details.cached_tokens == 8
    seeded = dict(model="tiny", prompt=prompt, max_tokens=6, temperature=0.8, seed=7,
                  extra_body={"ignore_eos": True})
    a = c.completions.create(**seeded).choices[0].text
    b = "".join(ch.choices[0].text for ch in c.completions.create(stream=True, **seeded))
    assert a == b == text_of(reference_tokens(list(prompt.encode()), 6, seed=7))


def test_prefix_aware_follows_the_engines_block_events(replicas, make_router):
    replicas += [RealReplica(0), RealReplica(1)]
    r = make_router("prefix_aware")
    for rep in replicas:
        r.add(rep)
    c = openai.OpenAI(base_url=r.url + "/v1", api_key="x", max_retries=0, timeout=30)
    system = "system prompt shared by all. " * 2
    first = c.completions.create(model="tiny", prompt=system + "A", max_tokens=1)
    holder = [i for i, rep in enumerate(replicas) if rep.engine.cached_hashes()]
    assert len(holder) == 1
    for q in "BCDE":
        out = c.completions.create(model="tiny", prompt=system + q, max_tokens=1)
        assert out.usage.prompt_tokens_details.cached_tokens >= len(system) // BLOCK * BLOCK
    other = replicas[1 - holder[0]]
    assert not other.engine.cached_hashes()  # nothing was sent there
    assert first.usage.prompt_tokens_details.cached_tokens == 0


def test_a_client_that_leaves_frees_its_blocks(replicas, make_router):
    replicas.append(RealReplica(0, num_blocks=64, step_s=0.04))  # 80 tokens: 3.2 s of work
    r = make_router()
    r.add(replicas[0])
    bm = replicas[0].engine.block_manager
    with httpx.stream("POST", r.url + "/v1/completions", json={
            "model": "tiny", "prompt": "x" * 40, "max_tokens": 80, "stream": True,
            "ignore_eos": True}) as s:
        lines = s.iter_lines()
        next(lines)
        assert replicas[0].engine.has_work
    r.wait(lambda: not replicas[0].engine.has_work)
    assert bm.num_free == bm.num_blocks  # cached blocks count as free (evictable)


def test_a_replica_that_shuts_down_mid_request_hands_it_to_another(replicas, make_router):
    """A replica that stops (its world restarting) ends its requests with "abort" on its way
    out: not an answer. The router takes it out and runs the request again elsewhere."""
    replicas.append(RealReplica(0, step_s=0.02))
    r = make_router()
    r.add(replicas[0])
    prompt = "shut down mid-request"
    want = text_of(reference_tokens(list(prompt.encode()), 60))
    c = openai.OpenAI(base_url=r.url + "/v1", api_key="x", max_retries=0, timeout=60)
    result: list = []
    worker = threading.Thread(target=lambda: result.append(c.completions.create(
        model="tiny", prompt=prompt, max_tokens=60, temperature=0,
        extra_body={"ignore_eos": True})))
    worker.start()
    r.wait(lambda: replicas[0].engine.has_work)  # running on replica 0 (60 steps: 1.2 s)
    replicas.append(RealReplica(1))
    r.add(replicas[1])
    replicas[0].close()  # a graceful stop: the engine aborts what it holds, then leaves
    worker.join(60)
    assert result and result[0].choices[0].text == want
    assert result[0].choices[0].finish_reason == "length"
    assert r.ready_ids() == [1]
