"""The launchers' wire under attack: bad, silent, forged or duplicate peers on the
rendezvous port and the control channel never crash node 0, never lock the real nodes out,
and are named for what they are."""

from __future__ import annotations

import json
import socket
import time

import pytest

from pypto_serving.launcher import wire
from pypto_serving.launcher.control import Link

pytestmark = pytest.mark.timeout(120)

SECRET = "wire-test-secret-0123456789"


@pytest.fixture(autouse=True)
def job_secret(monkeypatch):
    monkeypatch.setenv("PYPTO_LAUNCH_SECRET", SECRET)
    monkeypatch.delenv("PYPTO_LAUNCH_SECRET_FILE", raising=False)


def _connect(port: int, timeout: float = 30.0) -> socket.socket:
    """Connect to node 0's rendezvous port once it listens."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=5.0)
            sock.settimeout(10.0)
            return sock
        except OSError:
            assert time.monotonic() < deadline, "node 0 never listened"
            time.sleep(0.05)


def _line(sock: socket.socket) -> bytes:
    buf = b""
    while b"\n" not in buf:
        chunk = sock.recv(4096)
        assert chunk, f"closed after {buf!r}"
        buf += chunk
    return buf.split(b"\n", 1)[0]


def _hello(nonce: str, node_rank: int, secret: str = SECRET, nnodes: int = 2,
           **override) -> tuple[dict, str]:
    mine = wire.nonce()
    fields = {"hello": wire.HELLO, "node_rank": node_rank, "nnodes": nnodes,
              "nproc_per_node": 1, "run_id": "none", "config_digest": "",
              "instance": wire.nonce(), "nonce": mine}
    fields["mac"] = wire.mac(secret.encode(), "hello", wire.canonical(fields), nonce)
    fields.update(override)
    return fields, mine


def _send(sock: socket.socket, fields: dict) -> None:
    sock.sendall(json.dumps(fields).encode() + b"\n")


def _challenge(sock: socket.socket) -> str:
    return json.loads(_line(sock))["nonce"]


def _reply(sock: socket.socket) -> dict:
    return json.loads(_line(sock))


def test_bad_clients_cannot_crash_or_block_node_0(port, lt):
    """A silent client, a hello with node_rank [1], garbage, a wrong secret, an
    out-of-range rank and an endless line are each dropped with a warning (those that
    said something get a refusal naming why); the real node 1 still joins."""
    common = ["--nnodes", "2", "--nproc-per-node", "1", "--master-addr", "127.0.0.1",
              "--master-port", str(port), "--rdzv-timeout", "60"]
    script = str(lt.workers / "allreduce.py")
    node0 = lt.start([*common, "--node-rank", "0", script])
    silent = _connect(port)
    refusals = {}
    try:
        bad = _connect(port)
        fields, _ = _hello(_challenge(bad), 1)
        _send(bad, {**fields, "node_rank": [1]})
        refusals["list"] = _reply(bad)
        bad = _connect(port)
        _challenge(bad)
        bad.sendall(b"\x1b[31mnot json\n")
        refusals["garbage"] = _reply(bad)
        bad = _connect(port)
        fields, _ = _hello(_challenge(bad), 1, secret="some-other-secret-abcdef")
        _send(bad, fields)
        refusals["secret"] = _reply(bad)
        bad = _connect(port)
        fields, _ = _hello(_challenge(bad), 7)
        _send(bad, fields)
        refusals["range"] = _reply(bad)
        bad = _connect(port)
        _challenge(bad)
        bad.sendall(b"x" * 17_000)  # over the 16 KiB a line may have
        refusals["long"] = _reply(bad)
        node1 = lt.start([*common, "--node-rank", "1", script])
        code1, out1, err1 = node1.finish(timeout=60)
        code0, out0, err0 = node0.finish(timeout=30)
    finally:
        silent.close()
    assert (code0, code1) == (0, 0), err0 + err1
    assert lt.rank_json(out0)[0]["sum"] == lt.rank_json(out1)[1]["sum"] == 1 + 2
    assert all(not r["ok"] for r in refusals.values()), refusals
    assert "node_rank" in refusals["list"]["error"]
    assert "authentication failed" in refusals["secret"]["error"]
    assert "node rank 7 is out of range 1..1" in refusals["range"]["error"]
    assert "longer than" in refusals["long"]["error"]
    assert err0.count("warning: rendezvous: dropped a connection from 127.0.0.1") >= 5, err0
    assert "Traceback" not in err0 and "\x1b" not in err0


def _fake_node_1(port: int) -> Link:
    """Join node 0 as node 1 with the right secret, as a launcher would."""
    sock = _connect(port)
    theirs = _challenge(sock)
    fields, mine = _hello(theirs, 1)
    _send(sock, fields)
    reply = _reply(sock)
    assert reply["ok"] and reply["mac"] == wire.mac(SECRET.encode(), "go", theirs, mine)
    return Link(sock, wire.link_key(SECRET.encode(), theirs, mine), joiner=True)


def _control(link, op: str, node: int, why: str, seq: int, key: bytes | None = None) -> bytes:
    fields = {"op": op, "node": node, "why": why, "seq": seq}
    fields["mac"] = wire.mac(key or link.key, "up", wire.canonical(fields))
    return json.dumps(fields).encode() + b"\n"


def test_forged_control_messages_are_dropped_and_reasons_escaped(port, lt):
    """On an authenticated link, garbage, a wrong MAC, a replayed sequence number and a
    node speaking for another are dropped with a warning; the real stop is obeyed and
    its reason printed with control bytes escaped."""
    node0 = lt.start(["--nnodes", "2", "--nproc-per-node", "1", "--master-addr",
                      "127.0.0.1", "--master-port", str(port), "--rdzv-timeout", "60",
                      "--grace-period", "1", "--node-rank", "0",
                      str(lt.workers / "behave.py")])
    link = _fake_node_1(port)
    try:
        node0.wait_for_json(1, timeout=60)
        link.sock.sendall(b"garbage {\n")
        link.sock.sendall(_control(link, "stop", 1, "forged", 0, key=b"k" * 32))
        link.sock.sendall(_control(link, "stop", 1, "replayed", 5))
        link.sock.sendall(_control(link, "stop", 0, "speaks for node 0", 0))
        link.sock.sendall(_control(link, "stop", 1, "rank 9 \x1b[2J\x07 failed", 1))
        code, _, err = node0.finish(timeout=30)
    finally:
        link.sock.close()
    assert code == 1, err
    assert "failed: node 1 failed: rank 9 \\x1b[2J\\x07 failed" in err, err
    assert "forged" not in err.replace("it failed authentication", "")
    for why in ("dropped a control message from node 1: message:",
                "it failed authentication", "sequence number 5, expected 0",
                "it speaks for node 0"):
        assert why in err, (why, err)
    assert "\x1b" not in err and "Traceback" not in err


def test_a_duplicated_node_rank_is_named_at_once(port, lt):
    """Two launchers given --node-rank 1: all three stop within seconds (not the 60 s
    rendezvous timeout) naming the duplicate, never "master unreachable"."""
    common = ["--nnodes", "3", "--nproc-per-node", "1", "--master-addr", "127.0.0.1",
              "--master-port", str(port), "--rdzv-timeout", "60"]
    script = str(lt.workers / "allreduce.py")
    start = time.monotonic()
    node0 = lt.start([*common, "--node-rank", "0", script])
    first = lt.start([*common, "--node-rank", "1", script])
    second = lt.start([*common, "--node-rank", "1", script])
    ends = [job.finish(timeout=40) for job in (node0, first, second)]
    assert time.monotonic() - start < 30
    for code, out, err in ends:
        assert code == 1, err
        assert "--node-rank 1 was given to two launchers" in err, err
        assert "unreachable" not in err and "[rank" not in out


def test_a_second_node_0_on_the_same_machine_is_named(port, lt):
    common = ["--nnodes", "2", "--nproc-per-node", "1", "--master-addr", "127.0.0.1",
              "--master-port", str(port), "--rdzv-timeout", "60"]
    script = str(lt.workers / "allreduce.py")
    node0 = lt.start([*common, "--node-rank", "0", script])
    _connect(port).close()  # node 0 listens
    again = lt.run([*common, "--node-rank", "0", script], timeout=30)
    assert again.returncode == 1, again.stderr
    assert "another pypto launch is already node 0 at --master-port" in again.stderr
    assert "is --node-rank 0 given twice?" in again.stderr
    node0.kill()
