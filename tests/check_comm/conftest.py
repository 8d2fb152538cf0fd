"""check-comm test helpers: run `pypto check-comm` in a real subprocess, read its --json
report, and prove afterwards that none of its processes is left (psutil)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[2]
PYTHON = ROOT / ".venv" / "bin" / "python"
MARK = "PYPTO_CHECK_COMM_TEST"


def _marked(mark: str) -> list[psutil.Process]:
    """Running processes whose environment carries this run's mark (launcher, zygote,
    workers: they all inherit it)."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get(MARK) == mark and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except psutil.Error:
            continue
    return found


def run_check(args: list[str], tmp_path: Path, timeout: float = 150) -> SimpleNamespace:
    """`pypto check-comm ARGS --json FILE`; returns rc, stdout, stderr, report (None if no
    file), elapsed seconds; fails if the command overruns or leaves a process behind."""
    report_path = tmp_path / f"report-{uuid.uuid4().hex[:8]}.json"
    mark = uuid.uuid4().hex
    env = {**os.environ, MARK: mark, "PYPTO_PLATFORM": "cpu"}
    python = str(PYTHON) if PYTHON.exists() else sys.executable
    cmd = [python, "-m", "pypto_serving.cli.entry", "check-comm", *args,
           "--json", str(report_path)]
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, cwd=ROOT)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)
        try:
            out, err = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        pytest.fail(f"check-comm {' '.join(args)} ran past {timeout}s\n{out}\n{err}")
    elapsed = time.monotonic() - start
    deadline = time.monotonic() + 5
    left = _marked(mark)
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = _marked(mark)
    assert not left, f"left running: {[(p.pid, p.cmdline()) for p in left]}"
    report = json.loads(report_path.read_text()) if report_path.exists() else None
    return SimpleNamespace(rc=proc.returncode, out=out, err=err, report=report,
                           elapsed=elapsed)


@pytest.fixture
def check_comm(tmp_path):
    """check_comm(args, timeout=150) -> SimpleNamespace(rc, out, err, report, elapsed)."""
    return lambda args, timeout=150: run_check([*args], tmp_path, timeout)


@pytest.fixture
def validate_report():
    """Validate a report against core's pypto.commcheck/v1 JSON Schema (jsonschema)."""
    import jsonschema

    from pypto_serving.core.comm_report import REPORT_JSON_SCHEMA

    validator = jsonschema.Draft202012Validator(REPORT_JSON_SCHEMA)
    return validator.validate
