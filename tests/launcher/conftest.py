"""Launcher test helpers: worker scripts, output parsing, proof that processes are gone.

Tests get them through the `lt` fixture (the repo runs pytest in importlib mode, so test
modules cannot import each other).
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest

HERE = Path(__file__).resolve().parent
WORKERS = HERE / "workers"
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


def family(pid: int) -> list[int]:
    """`pid` and every process below it, now."""
    try:
        proc = psutil.Process(pid)
        return [pid] + [p.pid for p in proc.children(recursive=True)]
    except psutil.Error:
        return []


def _describe(pid: int) -> str:
    try:
        return f"{pid} {' '.join(psutil.Process(pid).cmdline())}"
    except psutil.Error:
        return str(pid)


@pytest.fixture
def lt(pypto_launch, launch_process):
    """Launcher test tools: run (blocking), start (background), parsing and process checks."""
    yield SimpleNamespace(run=pypto_launch, start=launch_process, workers=WORKERS,
                          rank_lines=rank_lines, rank_json=rank_json, assert_gone=assert_gone,
                          running=running, family=family)
