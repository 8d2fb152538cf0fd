"""Shared fixtures: free ports, the CLI runner, paths, jobs run once per session."""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from filelock import FileLock

ROOT = Path(__file__).resolve().parent.parent

# Jobs that do not name a platform run on the CPU (gloo), also on a GPU machine; tests that
# need a GPU name cuda in their config or with --platform, which rank above this.
os.environ.setdefault("PYPTO_PLATFORM", "cpu")


_next_port = itertools.count()


def _port_block() -> range:
    """This xdist worker's share of the ports from 20000 up to the kernel's ephemeral range
    (ip_local_port_range; 32768 by default)."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    size = max(64, (low - 20000) // max(1, workers))
    base = 20000 + size * (int(worker) if worker.isdigit() else 0)
    return range(base, base + size)


def free_port() -> int:
    """A TCP port nobody listens on right now, from this xdist worker's own block below the
    kernel's ephemeral range: between here and the child process that binds it, no other
    process's bind(0) and no other worker can take it (with bind(0) here, a gloo or uvicorn
    socket of the other worker sometimes could)."""
    block = _port_block()
    for _ in range(len(block)):
        port = block[next(_next_port) % len(block)]
        with socket.socket() as s:
            try:
                s.bind(("", port))
            except OSError:  # in use, or still in TIME_WAIT: the next one
                continue
            return port
    raise RuntimeError(f"no free port in {block.start}..{block.stop - 1}")


@pytest.fixture
def repo_root() -> Path:
    return ROOT


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture
def ports() -> Callable[[], int]:
    """free_port itself, for a test that needs several."""
    return free_port


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


# --- launched jobs shared by a whole session, run once whatever xdist does -----------------
# xdist_group cannot group tests with pytest 9 (xdist 3.8 renames `item._nodeid`, which pytest
# 9 no longer reads); scripts/test distributes by file (--dist loadfile), so a module fixture
# runs once, but a job that tests of several files share would still run once per worker.
# Such a job runs under `run_once`: the first worker to ask runs it, the others wait on its
# lock and read the cached result. Each such job counts its own runs (RUNS_FILE_ENV); the
# session's end checks every count is 1.

SESSION_DIR_ENV = "PYPTO_TEST_SESSION_DIR"
RUNS_FILE_ENV = "PYPTO_TEST_RUNS_FILE"
"""The file a shared job appends one line to each time it really runs (set for its launch)."""


def pytest_configure(config: pytest.Config) -> None:
    if not hasattr(config, "workerinput"):  # the controller (or a run without xdist)
        os.environ[SESSION_DIR_ENV] = tempfile.mkdtemp(prefix="pypto-test-session-")


def _session_dir() -> Path:
    return Path(os.environ[SESSION_DIR_ENV])


def run_once(key: str, produce: Callable[[Path, dict[str, str]], object],
             timeout: float = 600) -> object:
    """`produce(work_dir, env)` once per test session, by whichever xdist worker asks first;
    its JSON result (or its failure) is what every caller gets. `env` holds RUNS_FILE_ENV for
    the job's launch, so that the job records each real run of itself."""
    root = _session_dir()
    done, failed = root / f"{key}.json", root / f"{key}.failed"
    with FileLock(str(root / f"{key}.lock"), timeout=timeout):
        if not done.exists() and not failed.exists():
            work = root / key
            work.mkdir()
            try:
                result = produce(work, {RUNS_FILE_ENV: str(root / f"{key}.runs")})
            except BaseException as e:
                failed.write_text(f"{type(e).__name__}: {e}")
                raise
            done.write_text(json.dumps(result))
    if failed.exists():
        pytest.fail(f"shared job {key} failed (in the worker that ran it):\n"
                    f"{failed.read_text()}")
    return json.loads(done.read_text())


def job_run_counts() -> dict[str, int]:
    """How many times each shared job of this session really ran, from the jobs' own records."""
    root = _session_dir()
    return {p.stem: len(p.read_text().splitlines()) for p in sorted(root.glob("*.runs"))}


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if hasattr(session.config, "workerinput") or SESSION_DIR_ENV not in os.environ:
        return
    counts = job_run_counts()
    wrong = {key: n for key, n in counts.items() if n != 1}
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if wrong:
        if reporter is not None:
            reporter.write_line(f"shared jobs that did not run exactly once: {wrong}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    elif counts and reporter is not None and reporter.verbosity > 0:
        reporter.write_line(f"shared jobs, runs each: {counts}")
    if counts and session.exitstatus != pytest.ExitCode.OK:  # keep the jobs' logs to read
        if reporter is not None:
            reporter.write_line(f"shared jobs' work directories kept in {_session_dir()}")
    else:
        shutil.rmtree(_session_dir(), ignore_errors=True)
