"""Launcher test helpers: worker scripts, output parsing, proof that processes are gone.

Tests get them through the `lt` fixture (the repo runs pytest in importlib mode, so test
modules cannot import each other).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest

HERE = Path(__file__).resolve().parent
WORKERS = HERE / "workers"
ROOT = HERE.parent.parent
LINE = re.compile(r"^\[rank(\d+)\]:(.*)$")


def rank_lines(text: str) -> dict[int, list[str]]:
    """Worker lines by rank, prefix stripped."""
    out: dict[int, list[str]] = {}
    for line in text.splitlines():
        m = LINE.match(line)
        if m:
            out.setdefault(int(m.group(1)), []).append(m.group(2))
    return out


def rank_json(text: str) -> dict[int, dict]:
    """The last JSON object each rank printed."""
    found = {}
    for rank, lines in rank_lines(text).items():
        for line in lines:
            if line.startswith("{"):
                found[rank] = json.loads(line)
    return found


def running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def assert_gone(pids, timeout: float = 5.0) -> None:
    """Every pid has ended (gone, or a zombie waiting for its reaper)."""
    deadline = time.monotonic() + timeout
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if running(p)]
        if alive:
            time.sleep(0.05)
    assert not alive, f"processes still running: {[_describe(p) for p in alive]}"


def _describe(pid: int) -> str:
    try:
        return f"{pid} {' '.join(psutil.Process(pid).cmdline())}"
    except psutil.Error:
        return str(pid)


class LaunchProcess:
    """`pypto launch` running in the background, its stdout read line by line."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None):
        python = ROOT / ".venv" / "bin" / "python"
        self.proc = subprocess.Popen(
            [str(python) if python.exists() else sys.executable, "-m",
             "pypto_serving.cli.main", "launch", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
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
                found.update(rank_json(line))
        return found

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def finish(self, timeout: float) -> tuple[int, str, str]:
        out, err = self.proc.communicate(timeout=timeout)
        before = "".join(line + "\n" for line in self.lines) + self._rest.decode()
        return self.proc.returncode, before + out, err

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@pytest.fixture
def lt(pypto_launch):
    """Launcher test tools: run (blocking), start (background), parsing and process checks."""
    started: list[LaunchProcess] = []

    def start(args: list[str], env: dict[str, str] | None = None) -> LaunchProcess:
        lp = LaunchProcess(args, env)
        started.append(lp)
        return lp

    yield SimpleNamespace(run=pypto_launch, start=start, workers=WORKERS,
                          rank_lines=rank_lines, rank_json=rank_json, assert_gone=assert_gone,
                          running=running)
    for lp in started:
        lp.kill()
