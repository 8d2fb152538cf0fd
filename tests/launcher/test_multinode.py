"""Two launchers on one machine form one world; a bad master fails fast and clearly."""

from __future__ import annotations

import socket
import time

import pytest

pytestmark = pytest.mark.timeout(120)

SECRET = "test-secret-0123456789abcdef"


@pytest.fixture(autouse=True)
def job_secret(monkeypatch):
    """Every launcher these tests start holds the job's shared secret (wire.py)."""
    monkeypatch.setenv("PYPTO_LAUNCH_SECRET", SECRET)
    monkeypatch.delenv("PYPTO_LAUNCH_SECRET_FILE", raising=False)


def test_two_nodes_on_loopback_form_one_world(port, lt):
    common = ["--nnodes", "2", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
              "--master-port", str(port), "--rdzv-timeout", "60"]
    script = str(lt.workers / "allreduce.py")
    node1 = lt.start([*common, "--node-rank", "1", script])
    node0 = lt.start([*common, "--node-rank", "0", script])
    code0, out0, err0 = node0.finish(timeout=90)
    code1, out1, err1 = node1.finish(timeout=90)
    assert (code0, code1) == (0, 0), err0 + err1
    rows0, rows1 = lt.rank_json(out0), lt.rank_json(out1)
    assert sorted(rows0) == [0, 1] and sorted(rows1) == [2, 3]
    for row in (*rows0.values(), *rows1.values()):
        assert row["world"] == 4 and row["sum"] == 1 + 2 + 3 + 4
        assert row["secret_seen"] is False  # the launchers' secret is theirs alone


def test_unreachable_master_fails_within_the_timeout(port, lt):
    start = time.monotonic()
    result = lt.run(["--nnodes", "2", "--node-rank", "1", "--master-addr", "127.0.0.1",
                     "--master-port", str(port), "--rdzv-timeout", "2",
                     str(lt.workers / "allreduce.py")], timeout=30)
    assert result.returncode == 1
    assert time.monotonic() - start < 15
    assert f"master 127.0.0.1:{port} unreachable for 2s" in result.stderr
    assert "[rank" not in result.stdout  # no worker ran


def test_master_port_in_use_is_a_clear_error(lt):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = lt.run(["--nproc-per-node", "2", "--master-port", str(port),
                         str(lt.workers / "allreduce.py")], timeout=30)
    assert result.returncode == 2
    assert f"--master-port {port} is already in use" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_nodes_that_disagree_are_refused(port, lt):
    common = ["--nnodes", "2", "--master-addr", "127.0.0.1", "--master-port", str(port),
              "--rdzv-timeout", "20"]
    script = str(lt.workers / "allreduce.py")
    node0 = lt.start([*common, "--nproc-per-node", "2", "--node-rank", "0", script])
    node1 = lt.start([*common, "--nproc-per-node", "1", "--node-rank", "1", script])
    code0, _, err0 = node0.finish(timeout=40)
    code1, _, err1 = node1.finish(timeout=40)
    assert code0 == 1 and code1 == 1
    assert "node 1 has nproc_per_node=1 but node 0 has 2" in err0
    assert "rendezvous refused by node 0" in err1


def test_a_failure_on_one_node_stops_every_node(port, lt):
    """Rank 3 (node 1) exits 9 after init: node 1 stops, tells node 0 over the control
    channel, and node 0 stops its workers and names the remote rank, within the grace
    period plus a few seconds, leaving nothing running on either node."""
    common = ["--nnodes", "2", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
              "--master-port", str(port), "--rdzv-timeout", "60", "--grace-period", "2"]
    script = [str(lt.workers / "nodefail.py"), "--fail-rank", "3", "--code", "9"]
    node1 = lt.start([*common, "--node-rank", "1", *script])
    node0 = lt.start([*common, "--node-rank", "0", *script])
    rows0 = node0.wait_for_json(2, timeout=60)
    family = lt.family(node0.proc.pid) + lt.family(node1.proc.pid)
    code1, _, err1 = node1.finish(timeout=30)
    ended1 = time.monotonic()
    code0, _, err0 = node0.finish(timeout=2 + 8)
    assert time.monotonic() - ended1 < 2 + 8
    assert (code0, code1) == (1, 1), err0 + err1
    assert "rank 3 (local rank 1, node 1) exited with code 9" in err1
    assert "failed: node 1 failed: rank 3 (local rank 1, node 1) exited with code 9" in err0
    assert "stopped the other worker(s) of this node: rank 0, 1" in err0
    lt.assert_gone(family + [row["pid"] for row in rows0.values()])


def test_restarts_across_nodes_are_refused(port, lt):
    result = lt.run(["--nnodes", "2", "--node-rank", "1", "--master-addr", "127.0.0.1",
                     "--master-port", str(port), "--max-restarts", "1",
                     str(lt.workers / "allreduce.py")], timeout=30)
    assert result.returncode == 2
    assert "--max-restarts 1 with --nnodes 2" in result.stderr
    assert "[rank" not in result.stdout


def test_unresolvable_master_fails_at_once(port, lt):
    try:
        socket.getaddrinfo("no-such-host.invalid", port)
    except socket.gaierror as e:
        if e.errno == socket.EAI_AGAIN:  # no resolver answers here: "try again" is retried
            pytest.skip("no DNS resolver on this machine")
    start = time.monotonic()
    result = lt.run(["--nnodes", "2", "--node-rank", "1", "--master-addr",
                     "no-such-host.invalid", "--master-port", str(port), "--rdzv-timeout",
                     "60", str(lt.workers / "allreduce.py")], timeout=30)
    assert result.returncode == 1
    assert time.monotonic() - start < 15  # not the 60 s rendezvous timeout
    assert "--master-addr 'no-such-host.invalid' does not resolve" in result.stderr


def test_a_killed_launcher_on_another_node_stops_node_0(port, lt):
    """kill -9 of node 1's launcher (its workers die with it): node 0 sees the control
    connection close without "done" and stops its own workers."""
    common = ["--nnodes", "2", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
              "--master-port", str(port), "--rdzv-timeout", "60", "--grace-period", "2"]
    script = str(lt.workers / "nodefail.py")
    node1 = lt.start([*common, "--node-rank", "1", script])
    node0 = lt.start([*common, "--node-rank", "0", script])
    rows0 = node0.wait_for_json(2, timeout=60)
    family = lt.family(node0.proc.pid) + lt.family(node1.proc.pid)
    node1.proc.kill()
    code0, _, err0 = node0.finish(timeout=2 + 8)
    assert code0 == 1, err0
    assert "node 1 failed: the launcher of node 1 went away" in err0
    lt.assert_gone(family + [row["pid"] for row in rows0.values()])
