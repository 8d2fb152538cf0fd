"""EngineServer over real ZMQ sockets on loopback, with a real DEALER client as the router."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import msgpack
import psutil
import pytest
import zmq
from engine_fakes import (
    FailingExecutor,
    FakeModelExecutor,
    LockStepFakeExecutor,
    reference_tokens,
)

from pypto_serving.engine import protocol
from pypto_serving.engine.engine import Engine
from pypto_serving.engine.hashing import block_hashes
from pypto_serving.engine.server import EngineServer
from pypto_serving.engine.tokenizer import ByteTokenizer

HERE = Path(__file__).parent


class Dealer:
    """The router's side of one replica connection."""

    def __init__(self, endpoint: str, greet: bool = True):
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)
        if greet:  # a router opens with a stats request; the engine answers hello first
            self.send({"op": "stats"})
            self.hello = self.recv()
            assert self.hello["op"] == "hello"
            self.snapshot = self.recv()
            assert self.snapshot["op"] == "kv_events"
            assert self.recv()["op"] == "stats"

    def send(self, message: dict) -> None:
        self.sock.send(protocol.encode(message))

    def recv(self, timeout_s: float = 10.0) -> dict:
        if not self.sock.poll(int(timeout_s * 1000)):
            raise TimeoutError("no message from the engine")
        return protocol.decode(self.sock.recv(), protocol.ENGINE_OPS)

    def until(self, pred, timeout_s: float = 10.0) -> list[dict]:
        """Messages up to and including the first one `pred` accepts."""
        deadline = time.monotonic() + timeout_s
        got = []
        while True:
            got.append(self.recv(max(0.01, deadline - time.monotonic())))
            if pred(got[-1]):
                return got

    def close(self) -> None:
        self.sock.close()
        self.ctx.term()


def add(rid: str, prompt: list[int], **sampling) -> dict:
    sampling.setdefault("ignore_eos", True)
    return {"op": "add", "rid": rid, "prompt_token_ids": prompt, "sampling": sampling}


def finished(rid: str):
    return lambda m: m["op"] == "output" and m["rid"] == rid and m["finished"]


def tokens_of(messages: list[dict], rid: str) -> list[int]:
    return [t for m in messages if m["op"] == "output" and m["rid"] == rid
            for t in m["token_ids"]]


@pytest.fixture
def serve():
    """serve(executor=None) -> (server, engine): an EngineServer running on a thread,
    stopped and joined at the end."""
    started: list[tuple[EngineServer, threading.Thread, threading.Event]] = []

    def start(executor=None, max_num_seqs: int = 4, **server_kw):
        executor = executor or FakeModelExecutor(64, 4)
        engine = Engine(executor, num_blocks=64, block_size=4, max_num_seqs=max_num_seqs,
                        max_num_batched_tokens=32, max_model_len=128,
                        tokenizer=ByteTokenizer())
        server = EngineServer(engine, replica=1, model_name="fake", **server_kw)
        stop = threading.Event()
        thread = threading.Thread(target=server.run, args=(stop,), daemon=True)
        thread.start()
        started.append((server, thread, stop))
        return server, engine

    yield start
    for server, thread, stop in started:
        stop.set()
        thread.join(timeout=10)
        assert not thread.is_alive(), "the server loop did not stop"
        assert server.closed


def test_hello_then_snapshot_then_a_stream_of_outputs(serve):
    server, engine = serve()
    client = Dealer(server.endpoint)
    assert client.hello == {"op": "hello", "replica": 1, "block_size": 4,
                            "max_model_len": 128, "model": "fake", "kv_blocks_total": 64}
    assert client.snapshot == {"op": "kv_events", "stored": [], "evicted": []}
    prompt = list(b"shared prefix!!!")
    client.send(add("a", prompt, max_tokens=6))
    got = client.until(finished("a"))
    assert tokens_of(got, "a") == reference_tokens(prompt, 6)
    final = got[-1]
    assert (final["finish_reason"], final["prompt_tokens"], final["completion_tokens"],
            final["cached_tokens"]) == ("length", 16, 6, 0)
    # The blocks it filled were published; a second router learns them in its snapshot.
    stored = {h for m in got if m["op"] == "kv_events" for h in m["stored"]}
    full = (16 + 5) // 4
    assert stored == set(block_hashes(prompt + reference_tokens(prompt, 6), 4)[:full])
    other = Dealer(server.endpoint)
    assert set(other.snapshot["stored"]) == stored
    client.send({"op": "stats"})
    stats = client.until(lambda m: m["op"] == "stats" and m["running"] == 0)[-1]
    assert stats["kv_blocks_total"] == 64 and stats["pending_tokens"] == 0
    client.close()
    other.close()


def test_malformed_frames_are_dropped_and_the_server_keeps_serving(serve):
    server, _ = serve()
    client = Dealer(server.endpoint, greet=False)
    client.sock.send(b"\xc1 not msgpack")  # the first frame: still greeted, then dropped
    assert client.recv()["op"] == "hello"
    client.sock.send(msgpack.packb([1, 2, 3]))
    client.sock.send(protocol.encode({"op": "launch_missiles"}))
    client.sock.send(protocol.encode({"op": "add", "prompt_token_ids": [1]}))  # no rid
    client.sock.send_multipart([b"two", b"frames"])
    client.sock.send(protocol.encode({"op": "abort", "rid": 7}))
    client.send({"op": "add", "rid": "bad-sampling", "prompt_token_ids": [1, 2],
                 "sampling": {"max_tokens": 2, "warp_drive": True}})
    error = client.until(lambda m: m["op"] == "error")[-1]
    assert error["rid"] == "bad-sampling" and error["code"] == 400
    assert "warp_drive" in error["message"]
    client.send(add("ok", [5, 6, 7], max_tokens=3))
    got = client.until(finished("ok"))
    assert tokens_of(got, "ok") == reference_tokens([5, 6, 7], 3)
    assert server.dropped_frames == 6
    client.close()


def test_an_impossible_request_gets_an_error_naming_the_limit(serve):
    server, _ = serve()
    client = Dealer(server.endpoint)
    client.send(add("huge", [1] * 100, max_tokens=50))
    client.send(add("fine", [1, 2, 3], max_tokens=2))
    got = client.until(finished("fine"))
    [error] = [m for m in got if m["op"] == "error"]
    assert error["rid"] == "huge" and error["code"] == 400
    assert "max_model_len=128" in error["message"]
    client.close()


def test_a_full_queue_answers_429_and_keeps_the_others(serve):
    server, _ = serve(FakeModelExecutor(64, 4, step_s=0.005), max_queue=1, max_num_seqs=1)
    client = Dealer(server.endpoint)
    client.send(add("running", [1, 2], max_tokens=100))
    client.until(lambda m: m["op"] == "output")
    client.send(add("waiting", [3, 4], max_tokens=2))
    client.send({"op": "stats"})
    client.until(lambda m: m["op"] == "stats" and m["waiting"] == 1)
    client.send(add("refused", [5, 6], max_tokens=2))
    error = client.until(lambda m: m["op"] == "error")[-1]
    assert error["rid"] == "refused" and error["code"] == 429
    assert "serve.max_queue=1" in error["message"]
    got = client.until(finished("waiting"))
    assert tokens_of(got, "waiting") == reference_tokens([3, 4], 2)
    client.close()


def test_abort_mid_stream_ends_the_request_and_frees_its_blocks(serve):
    server, engine = serve(FakeModelExecutor(64, 4, step_s=0.005))
    client = Dealer(server.endpoint)
    client.send(add("long", [1, 2, 3], max_tokens=100))
    client.until(lambda m: m["op"] == "output" and m["completion_tokens"] >= 2)
    client.send({"op": "abort", "rid": "long"})
    final = client.until(finished("long"))[-1]
    assert final["finish_reason"] == "abort" and final["completion_tokens"] < 100
    stats = client.until(lambda m: m["op"] == "stats" and m["running"] == 0)[-1]
    assert stats["kv_blocks_free"] == 64
    client.close()


def test_outputs_go_back_to_the_router_that_sent_the_request(serve):
    server, _ = serve()
    a, b = Dealer(server.endpoint), Dealer(server.endpoint)
    a.send(add("from-a", [1, 2], max_tokens=3))
    b.send(add("from-b", [3, 4], max_tokens=3))
    got_a, got_b = a.until(finished("from-a")), b.until(finished("from-b"))
    assert tokens_of(got_a, "from-b") == [] and tokens_of(got_b, "from-a") == []
    assert tokens_of(got_b, "from-b") == reference_tokens([3, 4], 3)
    a.close()
    b.close()


def test_a_router_that_goes_away_has_its_requests_aborted(serve):
    server, engine = serve(FakeModelExecutor(64, 4, step_s=0.005))
    gone, watcher = Dealer(server.endpoint), Dealer(server.endpoint)
    gone.send(add("orphan", [1, 2, 3], max_tokens=100))
    watcher.until(lambda m: m["op"] == "stats" and m["running"] == 1)
    gone.close()
    stats = watcher.until(lambda m: m["op"] == "stats" and m["running"] == 0)[-1]
    assert stats["kv_blocks_free"] == 64 and stats["waiting"] == 0
    watcher.close()


def test_idle_replica_runs_dummy_steps_while_another_is_busy(serve):
    executor = LockStepFakeExecutor(64, 4)
    # A long idle wait on the socket: dummy steps must not wait on it (it would hold up the
    # busy replicas' every step), so 300 of them come long before 300 such waits could.
    server, engine = serve(executor, idle_poll_s=1.0)
    client = Dealer(server.endpoint)
    executor.others_busy.set()
    deadline = time.monotonic() + 10
    while executor.dummy_steps < 300 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert executor.dummy_steps >= 300
    client.send(add("mine", [9, 9], max_tokens=4))  # real work goes on among dummy steps
    assert tokens_of(client.until(finished("mine")), "mine") == reference_tokens([9, 9], 4)
    executor.others_busy.clear()
    time.sleep(0.05)
    settled = executor.dummy_steps
    time.sleep(0.1)
    assert executor.dummy_steps == settled  # idle everywhere: no steps at all
    client.close()


def test_a_failing_step_ends_every_request_with_an_error_and_stops_the_loop():
    executor = FailingExecutor(64, 4, fail_at=4, step_s=0.005)
    engine = Engine(executor, num_blocks=64, block_size=4, max_num_seqs=4,
                    max_num_batched_tokens=32, max_model_len=128, tokenizer=ByteTokenizer())
    server = EngineServer(engine)
    failure: list[BaseException] = []

    def run():
        try:
            server.run(threading.Event())
        except RuntimeError as e:
            failure.append(e)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    client = Dealer(server.endpoint)
    client.send(add("a", [1, 2], max_tokens=50))
    client.send(add("b", [3, 4], max_tokens=50))
    got = client.until(finished("a")) + client.until(finished("b"))
    assert {m["rid"]: m["finish_reason"] for m in got if m["op"] == "output" and m["finished"]} \
        == {"a": "error", "b": "error"}
    thread.join(timeout=10)
    assert not thread.is_alive() and server.closed
    assert "rank 1 of the replica is gone" in str(failure[0])
    assert engine.block_manager.num_used == 0
    client.close()


def test_sigterm_stops_the_server_cleanly_and_aborts_requests_in_flight():
    proc = subprocess.Popen([sys.executable, str(HERE / "serve_fake.py")],
                            stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(HERE)})
    try:
        endpoint = proc.stdout.readline().strip()
        assert endpoint.startswith("tcp://127.0.0.1:")
        client = Dealer(endpoint)
        assert client.hello["replica"] == 3
        client.send(add("slow", [1], max_tokens=200, temperature=0.7))
        client.until(lambda m: m["op"] == "output")
        proc.send_signal(signal.SIGTERM)
        final = client.until(finished("slow"))[-1]
        assert final["finish_reason"] in ("abort", "length")
        assert proc.wait(timeout=10) == 0
        assert proc.stdout.read().strip() == "stopped"
        assert not psutil.pid_exists(proc.pid) or psutil.Process(proc.pid).status() == "zombie"
        client.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
