"""A progress bar on a terminal (piped, there is none: test_layouts checks stderr is empty)."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.timeout(200)

ARGS = ["check-comm", "-tp", "2", "--devices-per-node", "2", "--sizes", "64B,1KB,4KB",
        "--iters", "3", "--warmup", "1"]


def test_a_terminal_gets_a_progress_bar(repo_root):
    python = repo_root / ".venv" / "bin" / "python"
    leader, follower = os.openpty()
    env = {**os.environ, "PYPTO_PLATFORM": "cpu", "COLUMNS": "100", "TERM": "xterm"}
    proc = subprocess.Popen([str(python) if python.exists() else sys.executable, "-m",
                             "pypto_serving.cli.entry", *ARGS], stdout=subprocess.DEVNULL,
                            stderr=follower, stdin=subprocess.DEVNULL, env=env, cwd=repo_root)
    os.close(follower)
    seen = b""
    deadline = time.monotonic() + 150
    try:
        while time.monotonic() < deadline:
            if select.select([leader], [], [], 0.5)[0]:
                try:
                    chunk = os.read(leader, 65536)
                except OSError:  # the terminal closed: the command ended
                    break
                if not chunk:
                    break
                seen += chunk
            elif proc.poll() is not None:
                break
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(leader)
    text = seen.decode(errors="replace")
    assert "check-comm" in text and "━" in text, text[-2000:]
    # every step counted: 3 ops x 3 sizes on TP, 3 broadcasts and a barrier on the world
    assert "13/13" in text

