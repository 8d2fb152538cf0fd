"""`pypto serve` on two nodes (two processes on loopback): node 1 runs its replica without a
router; it registers with node 0's router and is routed to like a local one. Ctrl-C on node 0
ends the job on both nodes (the launcher's control channel) and leaves no process."""

from __future__ import annotations

import socket
import time

import httpx
import openai
import psutil
import pytest
from serve_harness import ServeProcess


@pytest.fixture(autouse=True)
def job_secret(monkeypatch):
    """Launchers of several nodes need the job's shared secret (docs/launcher.md)."""
    monkeypatch.setenv("PYPTO_LAUNCH_SECRET", "multinode-test-secret-0123456789")
    monkeypatch.delenv("PYPTO_LAUNCH_SECRET_FILE", raising=False)


MODEL = "tiny-moe"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_node_1s_replica_registers_with_node_0s_router(serve_factory):
    http, rdzv = free_port(), free_port()
    layout = ["-dp", "2", "--model-profile", "tiny-moe", "--nnodes", "2", "--policy",
              "round_robin"]
    node0 = serve_factory(*layout, "--node-rank", "0", "--master-addr", "127.0.0.1",
                          "--master-port", str(rdzv),
                          "--port", str(http), replicas=0)
    node1 = ServeProcess(*layout, "--node-rank", "1", "--master-addr", "127.0.0.1",
                         "--master-port", str(rdzv), "--port", str(http), replicas=0,
                         url_line=r"register with the router at (http://\S+)")
    try:
        got = {int(node0.expect(r"replica (\d+) in rotation")[1]) for _ in range(2)}
        assert got == {0, 1}
        node1.expect(r"replica 1 registered with")
        c = openai.OpenAI(base_url=node0.url + "/v1", api_key="x", max_retries=0, timeout=60)
        for i in range(4):
            out = c.completions.create(model=MODEL, prompt=f"two nodes {i}", max_tokens=4)
            assert out.usage.completion_tokens >= 1
        wanted = [f'pypto:request_success_total{{finished_reason="length",model_name='
                  f'"{MODEL}",replica="{replica}"}} 2.0' for replica in ("0", "1")]
        deadline = time.monotonic() + 15  # a request's counter is bumped as its reply leaves
        while True:
            metrics = httpx.get(node0.url + "/metrics").text
            if all(w in metrics for w in wanted) or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        for w in wanted:
            assert w in metrics
        trees = node0.tree() + node1.tree()
        assert node0.interrupt(timeout=90) == 0
        node1.proc.wait(60)  # its launcher is told through the control channel
        gone, alive = psutil.wait_procs(trees, timeout=10)
        assert not alive, [p.pid for p in alive]
    finally:
        if node1.proc.poll() is None:
            node1.kill_all()
