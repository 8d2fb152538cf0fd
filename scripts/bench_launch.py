#!/usr/bin/env python
"""Launch-to-exit wall time of `pypto launch` against `torchrun`, side by side.

Each run starts N workers that do init_process_group("gloo") + barrier and exit. The
commands are interleaved round-robin (so load drifts hit all of them alike) and the table
shows medians over --runs, with the ratio to torchrun. Usage:

    .venv/bin/python scripts/bench_launch.py [--runs 7] [--nproc 4] [--checkout NAME=DIR]...
    .venv/bin/python scripts/bench_launch.py --restart [--cycles 7]   # bench_restart.py

`--checkout NAME=DIR` adds fork and spawn rows for another copy of the package (DIR holds
`pypto_serving/`, put first on PYTHONPATH), run as `python -m pypto_serving.cli.entry`, to
time a change against its baseline in the same run.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent
SCRIPT = """\
import torch.distributed as dist
dist.init_process_group("gloo")
dist.barrier()
dist.destroy_process_group()
"""


NOT_FORKING = "not forking workers"  # the launcher's notice when it falls back to spawn


def commands(script: str, nproc: int, checkouts: dict[str, str] | None = None
             ) -> dict[str, tuple[list[str], dict[str, str]]]:
    n = str(nproc)
    env = {k: v for k, v in os.environ.items() if k != "PYPTO_LAUNCH_START_METHOD"}
    flags = ["launch", "--standalone", "--platform", "cpu", "--nproc-per-node", n]
    rows = {"torchrun --standalone": (
        [str(BIN / "torchrun"), "--standalone", "--nproc-per-node", n, script], env)}
    if not checkouts:
        checkouts = {"": ""}
    for name, folder in checkouts.items():
        pypto = [str(BIN / "pypto"), *flags]
        row_env = env
        if folder:
            pypto = [sys.executable, "-m", "pypto_serving.cli.entry", *flags]
            path = [folder, *filter(None, [env.get("PYTHONPATH", "")])]
            row_env = {**env, "PYTHONPATH": os.pathsep.join(path)}
        tag = f" [{name}]" if name else ""
        for method in ("fork", "spawn"):
            rows[f"pypto launch --start-method {method}{tag}"] = (
                [*pypto, "--start-method", method, script], row_env)
    rows["python -c 'import torch' (1 process)"] = ([sys.executable, "-c", "import torch"], env)
    return rows


def time_once(cmd: list[str], env: dict[str, str]) -> float:
    """Wall time of one run; exits if it fails, or if a fork row did not really fork."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          timeout=300)
    elapsed = time.perf_counter() - start
    err = proc.stderr.decode()
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err[-2000:]}")
    if "fork" in cmd and NOT_FORKING in err:
        sys.exit(f"{' '.join(cmd)} fell back to spawning, so its row would be mislabelled:\n"
                 f"{err[-2000:]}")
    return elapsed


def main() -> None:
    if "--restart" in sys.argv[1:]:  # a service replica's restart time: bench_restart.py
        from bench_restart import main as restart_main

        restart_main([a for a in sys.argv[1:] if a != "--restart"])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="timed runs per command")
    parser.add_argument("--nproc", type=int, default=4, help="workers per launch")
    parser.add_argument("--checkout", action="append", default=[], metavar="NAME=DIR",
                        help="also time the package in DIR (repeatable)")
    opts = parser.parse_args()
    checkouts = dict(item.split("=", 1) for item in opts.checkout)
    with tempfile.TemporaryDirectory() as tmp:
        script = os.path.join(tmp, "gloo_barrier.py")
        Path(script).write_text(SCRIPT)
        cmds = commands(script, opts.nproc, checkouts)
        for cmd, env in cmds.values():  # warm the page cache; not timed
            time_once(cmd, env)
        times: dict[str, list[float]] = {name: [] for name in cmds}
        for _ in range(opts.runs):
            for name, (cmd, env) in cmds.items():
                times[name].append(time_once(cmd, env))
    base = statistics.median(times["torchrun --standalone"])
    print(f"launch-to-exit, {opts.nproc} workers, gloo init_process_group + barrier; "
          f"median of {opts.runs} interleaved runs")
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python "
          f"{platform.python_version()}, {time.strftime('%Y-%m-%d')}")
    print()
    width = max(len(n) for n in times)
    print(f"| {'command':<{width}} | median s | min s | max s | vs torchrun |")
    print(f"| {'-' * width} | -------: | ----: | ----: | ----------: |")
    for name, values in times.items():
        med = statistics.median(values)
        print(f"| {name:<{width}} | {med:8.2f} | {min(values):5.2f} | {max(values):5.2f} | "
              f"{med / base:10.2f}x |")


if __name__ == "__main__":
    main()
