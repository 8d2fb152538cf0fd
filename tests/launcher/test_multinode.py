"""Two launchers on one machine form one world; a bad master fails fast and clearly."""

from __future__ import annotations

import socket
import time

import pytest

pytestmark = pytest.mark.timeout(120)


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
