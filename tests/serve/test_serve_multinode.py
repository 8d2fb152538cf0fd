"""`pypto serve` on two nodes (two processes on loopback): node 1 runs its replica without a
router; it registers with node 0's router and is routed to like a local one. Ctrl-C on node 0
ends the job on both nodes (the launcher's control channel) and leaves no process."""

from __future__ import annotations

import time

import httpx
import openai
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families
from serve_harness import ServeProcess


@pytest.fixture(autouse=True)
def job_secret(monkeypatch):
    """Launchers of several nodes need the job's shared secret (docs/launcher.md)."""
    monkeypatch.setenv("PYPTO_LAUNCH_SECRET", "multinode-test-secret-0123456789")
    monkeypatch.delenv("PYPTO_LAUNCH_SECRET_FILE", raising=False)


MODEL = "tiny-moe"


def test_node_1s_replica_registers_with_node_0s_router(serve_factory, ports):
    http, rdzv = ports(), ports()
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
        # both replicas, node 0's and node 1's, answered (round robin over the two); a
        # request's counter is bumped as its reply leaves, so wait for all four, bounded
        deadline = time.monotonic() + 15
        while True:
            served = served_by(node0.url)
            if sum(served.values()) >= 4 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert sum(served.values()) == 4 and served["0"] >= 1 and served["1"] >= 1, served
        trees = node0.tree() + node1.tree()
        assert node0.interrupt(timeout=90) == 0
        node1.proc.wait(60)  # its launcher is told through the control channel
        gone, alive = psutil.wait_procs(trees, timeout=10)
        assert not alive, [p.pid for p in alive]
    finally:
        if node1.proc.poll() is None:
            node1.kill_all()


def served_by(url: str) -> dict[str, int]:
    """Finished requests per replica, from the router's /metrics."""
    out: dict[str, int] = {"0": 0, "1": 0}
    for fam in text_string_to_metric_families(httpx.get(url + "/metrics").text):
        if fam.name == "pypto:request_success":
            for sample in fam.samples:
                if sample.name.endswith("_total"):
                    out[sample.labels["replica"]] = (out.get(sample.labels["replica"], 0)
                                                     + int(sample.value))
    return out
