"""Shared fixtures: free ports, the CLI runner, paths."""

from __future__ import annotations

import signal
import socket
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A TCP port nobody listens on right now (bound and released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def repo_root() -> Path:
    return ROOT


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture
def cli():
    """Invoke `pypto` in-process through typer's runner: cli(["topo", "show"]) -> Result."""
    from typer.testing import CliRunner

    from pypto_serving.cli.main import app

    runner = CliRunner()

    def invoke(args: list[str], **kw):
        return runner.invoke(app, args, **kw)

    return invoke


# --- launching workers through `pypto launch` (owned by the launcher) ----------------------

PYTHON = ROOT / ".venv" / "bin" / "python"


def run_pypto_launch(args: list[str], timeout: float, env: dict[str, str] | None = None,
                     cwd: str | Path | None = None) -> subprocess.CompletedProcess:
    """Run `python -m pypto_serving.cli.main launch ARGS` in a real subprocess and wait.

    Returns the CompletedProcess (text stdout/stderr, captured). On timeout the launcher is
    sent SIGINT (it stops its workers), then killed, and the test fails with its output.
    Use --standalone or a free --master-port so parallel tests never share a port.
    """
    import sys

    python = str(PYTHON) if PYTHON.exists() else sys.executable
    proc = subprocess.Popen([python, "-m", "pypto_serving.cli.main", "launch", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, cwd=cwd)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)
        try:
            out, err = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        pytest.fail(f"pypto launch {' '.join(args)} did not finish in {timeout}s\n"
                    f"--- stdout ---\n{out}\n--- stderr ---\n{err}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.fixture
def pypto_launch():
    """The `run_pypto_launch` helper as a fixture: pypto_launch([...], timeout=60)."""
    return run_pypto_launch
