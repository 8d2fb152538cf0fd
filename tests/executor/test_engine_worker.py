"""The replica worker program end to end: `pypto launch -m pypto_serving.engine.worker` on the
CPU demo layout (DP 2 x TP 2 + EP), idle for longer than the communication timeout (the
leaders' keepalives hold the followers), then requests over ZMQ to both leaders, tokens equal
to the reference, and SIGTERM ends every process cleanly.
"""

from __future__ import annotations

import json
import os
import signal
import time

import executor_cases as cases
import psutil
import pytest
import zmq

from pypto_serving.core.loader import parse_config
from pypto_serving.engine import protocol
from pypto_serving.engine.sampling_params import SamplingParams
from pypto_serving.executor.generate import reference_generate
from pypto_serving.executor.model import build_reference_model

pytestmark = pytest.mark.timeout(180)

PROMPTS = {0: [[5, 9, 2, 7, 1, 3, 3], [4, 4]], 1: [[8, 1, 6]]}
MAX_TOKENS = 5
COMM_TIMEOUT_S = 6


def _collect(sock: zmq.Socket, rids: set[str], timeout_s: float) -> dict[str, list[int]]:
    tokens: dict[str, list[int]] = {rid: [] for rid in rids}
    done: set[str] = set()
    while done != rids:
        assert sock.poll(int(timeout_s * 1000)), f"no output within {timeout_s}s: {tokens}"
        msg = protocol.decode(sock.recv(), protocol.ENGINE_OPS)
        if msg["op"] == "error":
            raise AssertionError(msg)
        if msg["op"] == "output":
            tokens[msg["rid"]].extend(msg["token_ids"])
            if msg["finished"]:
                done.add(msg["rid"])
    return tokens


def test_worker_serves_every_replica_and_leaves_on_sigterm(tmp_path, launch_process):
    cfg = cases.config(dp=2, tp=2, moe=True, ep=True)
    cfg["serve"] = {"kv_block_size": 4, "max_num_seqs": 4, "max_num_batched_tokens": 8}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    lp = launch_process(["--config", str(path), "--standalone", "-m",
                         "pypto_serving.engine.worker"],
                        env={**os.environ, "PYPTO_COMM_TIMEOUT_S": str(COMM_TIMEOUT_S)})
    ready = lp.wait_for_json(2, timeout=120)  # the two leaders print their endpoint
    time.sleep(COMM_TIMEOUT_S + 2)  # idle past the timeout: followers must still be there
    assert lp.proc.poll() is None, "the launch ended while idle"
    assert {r["replica"] for r in ready.values()} == {0, 1}
    capacity = [line for line in lp.lines if "KV pool" in line]
    assert len(capacity) == 2 and "64 blocks x 4 tokens = 256 tokens" in capacity[0]
    ctx = zmq.Context()
    try:
        socks = {}
        for info in ready.values():
            sock = ctx.socket(zmq.DEALER)
            sock.connect(info["endpoint"])
            socks[info["replica"]] = sock
        for replica, prompts in PROMPTS.items():
            for i, prompt in enumerate(prompts):
                socks[replica].send(protocol.encode({
                    "op": "add", "rid": f"{replica}-{i}", "prompt_token_ids": prompt,
                    "sampling": SamplingParams(max_tokens=MAX_TOKENS, ignore_eos=True).to_dict()}))
        got = {replica: _collect(socks[replica], {f"{replica}-{i}" for i in range(len(p))}, 60)
               for replica, p in PROMPTS.items()}
    finally:
        ctx.destroy(linger=0)
    model = build_reference_model(parse_config(cfg).model)
    for replica, prompts in PROMPTS.items():
        for i, prompt in enumerate(prompts):
            want = reference_generate(model, [prompt], MAX_TOKENS).tokens[0]
            assert got[replica][f"{replica}-{i}"] == want
    workers = psutil.Process(lp.proc.pid).children(recursive=True)
    lp.signal(signal.SIGTERM)
    code, out, err = lp.finish(timeout=60)
    # the launcher ends as a SIGTERM-ed torchrun does (128 + 15) once every worker has left;
    # a worker that failed on the way out would show its traceback and exit code
    assert code == 128 + signal.SIGTERM and "all workers ended" in err, err[-4000:]
    assert "Traceback" not in err and "exited with code" not in err, err[-4000:]
    gone, alive = psutil.wait_procs(workers, timeout=10)
    assert not alive, alive
