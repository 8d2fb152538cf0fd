#!/usr/bin/env python
"""Restart time of a service replica: from SIGKILL of one worker to its group ready again.

A `ServiceLaunch` runs DP 2 x TP 2 replicas of the reference model on CPU (gloo): each
worker joins its replica's torch world through `init_distributed()`, builds its shard of
the reference decoder (`ReferenceModelRunner.load_weights`), runs a warm-up step and calls
`report_ready`. The bench then kills one worker of replica 1, times death -> "ready" of
that replica, and repeats. Rows: workers forked from a zygote that holds torch and the
executor imported (a service launch's default on CPU), forked from one that holds torch
only (a plain launch's preload, PYPTO_ZYGOTE_PRELOAD=torch,torch.distributed), and spawned
as fresh interpreters (the baseline: each restart imports torch again). Cycles of the rows
are interleaved; medians shown. Usage:

    .venv/bin/python scripts/bench_restart.py [--cycles 7] [--model small-dense]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

WORKER = """\
import os, signal
from pypto_serving.executor.distributed import init_distributed
from pypto_serving.executor.runner import ReferenceModelRunner
from pypto_serving.launcher.health import report_ready

ctx = init_distributed()
runner = ReferenceModelRunner(ctx, seed=0)
runner.load_weights()
runner.warmup()
stop = []
signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
report_ready({"pid": os.getpid()})
while not stop:
    signal.pause()
"""

# PYPTO_ZYGOTE_PRELOAD of the second row: a plain launch's preload, without the executor
TORCH_ONLY = "torch,torch.distributed"


def config(model: str) -> dict:
    from pypto_serving.core.loader import model_profile

    return {"parallel": {"data_parallel_size": 2, "tensor_parallel_size": 2},
            "model": json.loads(model_profile(model).model_dump_json()),
            "cluster": {"nnodes": 1, "devices_per_node": 4, "platform": "cpu"}}


class Launch:
    """One service launch of the bench worker, kept running over its cycles."""

    def __init__(self, cfg_path: str, script: str, method: str, cycles: int,
                 preload: str | None = None):
        from pypto_serving.launcher.plan import LaunchSpec
        from pypto_serving.launcher.service import ServiceLaunch, service_plan

        env = dict(os.environ)
        if preload:
            env["PYPTO_ZYGOTE_PRELOAD"] = preload
        spec = LaunchSpec(target=script, config=cfg_path, standalone=True, env=env,
                          max_restarts=cycles + 1, start_method=method, grace_period=2.0)
        self.out = io.StringIO()
        self.launch = ServiceLaunch(service_plan(spec), restart_backoff_s=0.0,
                                    stdout=self.out, stderr=self.out)
        self.launch.start()
        self.ready = {}
        while len(self.ready) < 2:
            e = self.until("ready", None)
            self.ready[e.group] = e
        self.start_method = self.launch.result.start_method

    def until(self, kind: str, group: int | None):
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            e = self.launch.next_event(timeout=1.0)
            if e is not None and e.kind == kind and group in (None, e.group):
                return e
            if e is None and self.launch.ended:
                break
        sys.exit(f"no {kind} event of group {group}:\n{self.out.getvalue()[-3000:]}")

    def cycle(self) -> float:
        """Kill rank 3 (replica 1); seconds until replica 1 is ready again."""
        pid = self.ready[1].payloads[3]["pid"]
        start = time.perf_counter()
        os.kill(pid, signal.SIGKILL)
        self.ready[1] = self.until("ready", 1)
        return time.perf_counter() - start

    def close(self) -> None:
        self.launch.stop(2.0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=7, help="timed restarts per row")
    parser.add_argument("--model", default="small-dense", help="model profile")
    opts = parser.parse_args(argv)
    rows = {"fork, zygote preloads torch + executor (default)": ("fork", None),
            "fork, zygote preloads torch only": ("fork", TORCH_ONLY),
            "spawn (fresh interpreter)": ("spawn", None)}
    times: dict[str, list[float]] = {name: [] for name in rows}
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp, "config.json")
        cfg.write_text(json.dumps(config(opts.model)))
        script = Path(tmp, "replica_worker.py")
        script.write_text(WORKER)
        launches = {name: Launch(str(cfg), str(script), method, opts.cycles, preload)
                    for name, (method, preload) in rows.items()}
        try:
            for name, launch in launches.items():  # one untimed restart each: warm caches
                if launch.start_method != rows[name][0]:
                    sys.exit(f"{name}: the launch used {launch.start_method}")
                launch.cycle()
            for _ in range(opts.cycles):
                for name, launch in launches.items():
                    times[name].append(launch.cycle())
        finally:
            for launch in launches.values():
                launch.close()
    print(f"replica restart: SIGKILL of one worker -> its DP replica ready again "
          f"(DP 2 x TP 2, model {opts.model}, CPU gloo); median of {opts.cycles} "
          "interleaved restarts")
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python "
          f"{platform.python_version()}, {time.strftime('%Y-%m-%d')}")
    print()
    base = statistics.median(times["spawn (fresh interpreter)"])
    width = max(len(n) for n in times)
    print(f"| {'workers':<{width}} | median s | min s | max s | vs spawn |")
    print(f"| {'-' * width} | -------: | ----: | ----: | -------: |")
    for name, values in times.items():
        med = statistics.median(values)
        print(f"| {name:<{width}} | {med:8.2f} | {min(values):5.2f} | {max(values):5.2f} | "
              f"{med / base:7.2f}x |")


if __name__ == "__main__":
    main()
