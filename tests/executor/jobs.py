"""Launching the executor's worker scripts as real multi-process jobs (loaded by path)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
ROOT = HERE.parent.parent
VENV_BIN = Path(sys.executable).parent
JOB_TIMEOUT_S = 180


def launch(config: dict, script: Path, args: list[str], work: Path,
           timeout: float = JOB_TIMEOUT_S) -> subprocess.CompletedProcess:
    """Run `script args` on every rank of `config`'s layout; returns the finished process."""
    config_path = work / "config.json"
    config_path.write_text(json.dumps(config))
    world = config["cluster"]["devices_per_node"] * config["cluster"].get("nnodes", 1)
    cmd = [str(VENV_BIN / "torchrun"), "--standalone", f"--nproc-per-node={world}",
           str(script), *args]
    env = {**os.environ, "PYPTO_CONFIG": str(config_path), "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT)


def run_layout_job(world_cases: list[dict], work: Path) -> dict[int, dict]:
    """Run layout_worker.py over `world_cases` (one world size); {rank: {case: result}}."""
    cases_path = work / "cases.json"
    cases_path.write_text(json.dumps(world_cases))
    out = work / "out"
    out.mkdir()
    proc = launch(world_cases[0]["config"], HERE / "layout_worker.py",
                  [str(cases_path), str(out)], work)
    assert proc.returncode == 0, f"job failed ({proc.returncode}):\n{proc.stderr[-6000:]}"
    return {int(p.stem[4:]): json.loads(p.read_text()) for p in sorted(out.glob("rank*.json"))}
