"""Service launches over two nodes (two launchers on loopback): a group that spans both
restarts on both together; a group on one node restarts alone."""

from __future__ import annotations

import os
import signal

import pytest

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(autouse=True)
def job_secret(monkeypatch):
    """Launchers of several nodes need the job's shared secret (docs/launcher.md)."""
    monkeypatch.setenv("PYPTO_LAUNCH_SECRET", "multinode-test-secret-0123456789")
    monkeypatch.delenv("PYPTO_LAUNCH_SECRET_FILE", raising=False)


def two_nodes(service, port, config, **kw):
    common = {"master_addr": "127.0.0.1", "master_port": port, "max_restarts": 1, **kw}
    return [service.start(config, node_rank=n, **common) for n in (0, 1)]


def ready(run, attempt, group=0):
    return run.until(lambda e: e.kind == "ready" and e.group == group and e.attempt == attempt)


def pids(event):
    return {rank: p["pid"] for rank, p in event.payloads.items()}


def test_a_group_spanning_two_nodes_restarts_on_both(service, port):
    nodes = two_nodes(service, port, service.config(dp=1, tp=4, nnodes=2))
    first = [ready(run, 0) for run in nodes]
    # one torch world of 4 ranks over both nodes, and every node sees every rank ready
    for e in first:
        assert sorted(e.payloads) == [0, 1, 2, 3]
        assert {p["world"] for p in e.payloads.values()} == {4}
        assert {p["sum"] for p in e.payloads.values()} == {10.0}
    old = pids(first[0])
    os.kill(old[3], signal.SIGKILL)  # a worker of node 1
    for n, run in enumerate(nodes):
        failed = run.until(lambda e: e.kind == "failed")
        assert (failed.rank, failed.cause, failed.signal, failed.node) == (
            3, "signal", signal.SIGKILL, 1), f"node {n}"
    again = [ready(run, 1) for run in nodes]
    new = pids(again[0])
    assert pids(again[1]) == new and set(new.values()).isdisjoint(old.values())
    service.assert_gone(old.values())  # node 0's workers were restarted too
    for run in nodes:
        assert run.history(0) == [("starting", 0), ("ready", 0), ("failed", 0),
                                  ("restarting", 1), ("starting", 1), ("ready", 1)]
    for run in nodes:
        run.launch.request_stop(2.0)
    results = [run.launch.wait(30) for run in nodes]
    assert [r.exit_code for r in results] in ([0, 1], [1, 0], [0, 0])
    service.assert_gone(new.values())


def test_a_group_on_one_node_restarts_alone(service, port):
    nodes = two_nodes(service, port, service.config(dp=2, tp=2, nnodes=2))
    g0, g1 = ready(nodes[0], 0, group=0), ready(nodes[1], 0, group=1)
    assert sorted(g0.payloads) == [0, 1] and sorted(g1.payloads) == [2, 3]
    os.kill(pids(g1)[2], signal.SIGKILL)
    failed = nodes[1].until(lambda e: e.kind == "failed")
    assert (failed.group, failed.rank, failed.node) == (1, 2, 1)
    ready(nodes[1], 1, group=1)
    assert all(service.running(p) for p in pids(g0).values())
    assert nodes[0].history(0) == [("starting", 0), ("ready", 0)]
    assert not [e for e in nodes[0].events if e.group == 1]  # node 0 holds no rank of it


def test_a_forged_group_message_is_dropped_with_a_warning(service, port):
    import json
    import time

    nodes = two_nodes(service, port, service.config(dp=1, tp=4, nnodes=2))
    for run in nodes:
        ready(run, 0)
    forged = {"op": "failed", "node": 1, "seq": 999, "mac": "0" * 64, "group": 0,
              "attempt": 0, "rank": 3, "cause": "exit", "exit_code": 1}
    link = nodes[1].launch.channel._links[0]  # node 1's authenticated link to node 0
    link.sock.setblocking(True)
    link.sock.sendall(json.dumps(forged).encode() + b"\n")
    link.sock.setblocking(False)
    deadline = time.monotonic() + 10
    while "failed authentication" not in nodes[0].err.getvalue():
        assert time.monotonic() < deadline, nodes[0].err.getvalue()
        time.sleep(0.05)
    assert nodes[0].launch.groups[0].policy.state.value == "ready"
    assert [e.kind for e in nodes[0].events] == ["starting", "ready"]
