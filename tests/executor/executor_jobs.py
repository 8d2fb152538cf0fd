"""Launching the executor's worker scripts through `pypto launch`.

Tests import it, and the layouts in executor_cases, by name: pyproject puts tests/executor on
pytest's pythonpath.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
from pathlib import Path
from types import ModuleType

HERE = Path(__file__).parent
ROOT = HERE.parent.parent
JOB_TIMEOUT_S = 180


def _shared_conftest() -> ModuleType:
    """tests/conftest.py (not importable by name) for its launch helper."""
    spec = importlib.util.spec_from_file_location("_tests_conftest", ROOT / "tests" / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_conftest = _shared_conftest()
run_pypto_launch = _conftest.run_pypto_launch
run_once = _conftest.run_once
RUNS_FILE_ENV = _conftest.RUNS_FILE_ENV


def launch(config: dict, script: Path, args: list[str], work: Path,
           timeout: float = JOB_TIMEOUT_S, env: dict[str, str] | None = None,
           ) -> subprocess.CompletedProcess:
    """`pypto launch --config CONFIG --standalone SCRIPT ARGS`: one worker per rank (`env`:
    variables added to this process's environment)."""
    config_path = work / "config.json"
    config_path.write_text(json.dumps(config))
    return run_pypto_launch(["--config", str(config_path), "--standalone", str(script), *args],
                            timeout=timeout, cwd=ROOT,
                            env={**os.environ, **env} if env is not None else None)


def run_layout_job(world_cases: list[dict], work: Path, env: dict[str, str] | None = None,
                   ) -> dict[int, dict]:
    """Run layout_worker.py over `world_cases` (one world size); {rank: {case: result}}."""
    cases_path = work / "cases.json"
    cases_path.write_text(json.dumps(world_cases))
    out = work / "out"
    out.mkdir()
    proc = launch(world_cases[0]["config"], HERE / "layout_worker.py",
                  [str(cases_path), str(out)], work, env=env)
    assert proc.returncode == 0, f"job failed ({proc.returncode}):\n{proc.stderr[-6000:]}"
    return {int(p.stem[4:]): json.loads(p.read_text()) for p in sorted(out.glob("rank*.json"))}


def shared_layout_job(world_cases: list[dict]) -> dict[int, dict]:
    """run_layout_job once per test session (whichever xdist worker asks first)."""
    world = world_cases[0]["config"]["cluster"]["devices_per_node"]
    by_rank = run_once(f"layouts-world{world}",
                       lambda work, env: run_layout_job(world_cases, work, env))
    return {int(rank): res for rank, res in by_rank.items()}
