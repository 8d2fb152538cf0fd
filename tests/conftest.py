"""Shared fixtures: free ports, the CLI runner, paths."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Jobs that do not name a platform run on the CPU (gloo), also on a GPU machine; tests that
# need a GPU name cuda in their config or with --platform, which rank above this.
os.environ.setdefault("PYPTO_PLATFORM", "cpu")


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


def launch_command(args: list[str], entry: list[str] | None = None) -> list[str]:
    """The command line of `pypto launch ARGS` (`entry`: what runs instead of
    `-m pypto_serving.cli.entry launch`, e.g. a wrapper script and its own arguments)."""
    python = str(PYTHON) if PYTHON.exists() else sys.executable
    return [python, *(entry or ["-m", "pypto_serving.cli.entry", "launch"]), *args]


def run_pypto_launch(args: list[str], timeout: float, env: dict[str, str] | None = None,
                     cwd: str | Path | None = None) -> subprocess.CompletedProcess:
    """Run `python -m pypto_serving.cli.entry launch ARGS` in a real subprocess and wait.

    Returns the CompletedProcess (text stdout/stderr, captured). On timeout the launcher is
    sent SIGINT (it stops its workers), then killed, and the test fails with its output.
    Use --standalone or a free --master-port so parallel tests never share a port.
    """
    proc = subprocess.Popen(launch_command(args), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=cwd)
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


class LaunchProcess:
    """`pypto launch` running in the background, its stdout read line by line."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None,
                 entry: list[str] | None = None):
        self.proc = subprocess.Popen(launch_command(args, entry), stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=env)
        self.lines: list[str] = []
        self._rest = b""

    def wait_for_json(self, count: int, timeout: float) -> dict[int, dict]:
        """Read stdout until `count` ranks printed a JSON line; return them by rank."""
        import select

        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        found: dict[int, dict] = {}
        while len(found) < count:
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                self.kill()
                raise AssertionError(f"only {sorted(found)} reported; output:\n"
                                     + "\n".join(self.lines) + self.proc.stderr.read())
            if not select.select([fd], [], [], min(left, 0.2))[0]:
                continue
            self._rest += os.read(fd, 65536)
            *complete, self._rest = self._rest.split(b"\n")
            for raw in complete:
                line = raw.decode()
                self.lines.append(line)
                m = re.match(r"^\[rank(\d+)\]:(\{.*)$", line)
                if m:
                    found[int(m.group(1))] = json.loads(m.group(2))
        return found

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def finish(self, timeout: float) -> tuple[int, str, str]:
        """Wait for the end: (exit code, all of stdout, stderr)."""
        out, err = self.proc.communicate(timeout=timeout)
        before = "".join(line + "\n" for line in self.lines) + self._rest.decode()
        return self.proc.returncode, before + out, err

    def kill(self) -> None:
        """SIGINT (the launcher cleans up), SIGKILL if it does not end within 10 s."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def pypto_launch():
    """The `run_pypto_launch` helper as a fixture: pypto_launch([...], timeout=60)."""
    return run_pypto_launch


@pytest.fixture
def launch_process():
    """Start `pypto launch` in the background: launch_process(args, env=None, entry=None)
    -> LaunchProcess; every one still running at the end of the test is stopped."""
    started: list[LaunchProcess] = []

    def start(args: list[str], env: dict[str, str] | None = None,
              entry: list[str] | None = None) -> LaunchProcess:
        started.append(LaunchProcess(args, env, entry))
        return started[-1]

    yield start
    for lp in started:
        lp.kill()
