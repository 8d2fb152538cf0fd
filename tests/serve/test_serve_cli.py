"""`pypto serve`'s usage errors: a clear message, exit code 2, nothing started."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from pypto_serving.core.errors import USAGE_ERROR


def serve(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pypto_serving.cli.entry", "serve", *args],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("args,says", [
    (["--policy", "random"], "--policy 'random': choose one of least_loaded"),
    (["--profile", "no-such-profile"], "no-such-profile"),
    (["-dp", "3", "-tp", "3", "--model-profile", "tiny-moe"], "tensor_parallel_size"),
])
def test_bad_flags_are_usage_errors(args, says):
    r = serve(*args)
    assert r.returncode == USAGE_ERROR, r.stderr
    assert says in r.stderr
    assert "Traceback" not in r.stderr


def test_a_taken_port_is_a_usage_error_before_any_replica_starts():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        r = serve("--port", str(s.getsockname()[1]))
    assert r.returncode == USAGE_ERROR
    assert "cannot listen on 127.0.0.1" in r.stderr and "--port" in r.stderr
    assert "starting" not in r.stderr  # no replica was launched
