#!/usr/bin/env python3
"""Start-up cost of the torch-free commands, side by side with their floor.

`pypto topo show` on a 64-rank layout should take about a bare Python start-up plus the
imports of typer, rich and pydantic. Prints medians over N runs and the ratio to that floor.
Usage: .venv/bin/python scripts/bench_cli.py [--runs 9]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent
LAYOUT_64 = ["-dp", "8", "-tp", "8", "--nnodes", "8", "--model-profile", "llama-8b-shape"]

CASES = [
    ("python -c pass", [sys.executable, "-c", "pass"]),
    ("floor: import typer, rich, pydantic, yaml",
     [sys.executable, "-c", "import typer.main, rich.console, rich.table, yaml\n"
                   "from pydantic import BaseModel"]),
    ("pypto topo show (64 ranks)", [str(BIN / "pypto"), "topo", "show", *LAYOUT_64]),
    ("pypto topo show --map (64 ranks)",
     [str(BIN / "pypto"), "topo", "show", *LAYOUT_64, "--map"]),
    ("pypto topo show --json (64 ranks)",
     [str(BIN / "pypto"), "topo", "show", *LAYOUT_64, "--json"]),
    ("pypto config validate (cpu-demo)",
     [str(BIN / "pypto"), "config", "validate",
      str(Path(__file__).resolve().parent.parent / "profiles" / "cpu-demo.yaml")]),
    ("python -c 'import torch' (what we avoid)", [sys.executable, "-c", "import torch"]),
]


def wall(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=9)
    args = ap.parse_args()
    for _, cmd in CASES:  # warm the page cache once
        wall(cmd)
    medians = {}
    for _ in range(args.runs):  # interleave cases so drift hits all of them alike
        for name, cmd in CASES:
            medians.setdefault(name, []).append(wall(cmd))
    floor = statistics.median(medians[CASES[1][0]])
    print(f"{'command':45} {'median s':>9} {'min s':>7} {'x floor':>8}")
    for name, times in medians.items():
        med = statistics.median(times)
        print(f"{name:45} {med:9.3f} {min(times):7.3f} {med / floor:8.2f}")


if __name__ == "__main__":
    main()
