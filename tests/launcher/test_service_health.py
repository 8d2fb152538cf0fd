"""The health channel: report_ready outside and inside a service launch, bad payloads, and
a connection that is not a worker of the current attempt."""

from __future__ import annotations

import socket
import threading

import msgpack
import pytest

from pypto_serving.launcher import health
from pypto_serving.launcher.group_policy import GroupState

pytestmark = pytest.mark.timeout(120)


def test_report_ready_outside_a_service_launch_does_nothing(monkeypatch):
    monkeypatch.delenv(health.SOCKET_ENV, raising=False)
    assert health.report_ready({"endpoint": "tcp://x"}) is None
    assert not health.in_service_launch()
    assert "pypto-heartbeat" not in [t.name for t in threading.enumerate()]


@pytest.mark.parametrize("payload,message", [
    ({"blob": b"x" * 70_000}, "bytes encoded; the limit is 65535"),
    (["not", "a", "dict"], "must be a dict, not list"),
    ({"obj": object()}, "is not plain data"),
])
def test_bad_payloads_are_refused_with_the_reason(monkeypatch, tmp_path, payload, message):
    monkeypatch.setenv(health.SOCKET_ENV, str(tmp_path / "nobody.sock"))
    monkeypatch.setenv(health.RANK_ENV, "0")
    with pytest.raises(health.HealthChannelError, match=message):
        health.report_ready(payload)


def test_an_unreachable_launcher_is_an_error_naming_the_socket(monkeypatch, tmp_path):
    path = tmp_path / "nobody.sock"
    monkeypatch.setenv(health.SOCKET_ENV, str(path))
    monkeypatch.setenv(health.RANK_ENV, "0")
    with pytest.raises(health.HealthChannelError, match=f"cannot reach .*{path}"):
        health.report_ready({})


def test_a_connection_with_a_wrong_token_is_closed_and_counts_for_nothing(service):
    run = service.start(service.config(dp=2), env={"SERVICE_NEVER_READY_RANK": "1"})
    run.until(lambda e: e.kind == "ready" and e.group == 0)
    address = run.launch.health.address
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as sock:
        sock.settimeout(10)
        sock.connect(address)
        sock.send(msgpack.packb({"op": "ready", "rank": 1, "token": "guessed", "pid": 1,
                                 "payload": {"endpoint": "evil"}}))
        assert sock.recv(100) == b""  # the launcher hung up on us
    assert run.launch.groups[1].policy.state is GroupState.STARTING
    assert [e.kind for e in run.events if e.group == 1] == ["starting"]
