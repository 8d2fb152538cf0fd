"""The loop the executor's launched test workers share: every case in one launched job.

Usage, from a worker script: `run_cases(run_case)` with the script's argv CASES.json OUT_DIR.
Each case's config re-creates the groups on the same world (init_model_parallel) when it
differs from the last; `run_case(case, ctx)` returns the rank's results, written to
OUT_DIR/rank{R}.json by case name.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from pypto_serving.core.loader import parse_config
from pypto_serving.core.topology import resolve_topology
from pypto_serving.executor import distributed
from pypto_serving.executor.context import ParallelContext


def run_cases(run_case: Callable[[dict, ParallelContext], dict]) -> None:
    cases_path, out_dir = sys.argv[1:3]
    cases = json.loads(Path(cases_path).read_text())
    torch.set_num_threads(1)
    ctx = distributed.init_distributed()
    runs = os.environ.get("PYPTO_TEST_RUNS_FILE")  # the suite checks a shared job ran once
    if runs and ctx.rank == 0:
        with open(runs, "a") as f:
            f.write(f"{os.getpid()}\n")
    results = {}
    for case in cases:
        config = parse_config(case["config"], source=case["name"])
        if config != ctx.config:
            ctx = distributed.init_model_parallel(resolve_topology(config))
        results[case["name"]] = run_case(case, ctx)
        ctx.world.barrier()
    Path(out_dir, f"rank{ctx.rank}.json").write_text(json.dumps(results))
    distributed.destroy_distributed()
