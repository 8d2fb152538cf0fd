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


# --- service launches (launcher.service), driven through the Python API ------------------

def service_config(tmp_path: Path, dp: int, tp: int = 1, nnodes: int = 1) -> Path:
    """A config file of a dense tiny model, DP x TP on CPU, written under `tmp_path`."""
    config = {"parallel": {"data_parallel_size": dp, "tensor_parallel_size": tp},
              "model": {"name": "tiny", "num_layers": 2, "hidden_size": 32,
                        "num_attention_heads": 4, "num_kv_heads": 2, "intermediate_size": 64,
                        "num_experts": 0, "vocab_size": 64},
              "cluster": {"nnodes": nnodes, "devices_per_node": dp * tp // nnodes,
                          "platform": "cpu"}}
    path = tmp_path / f"service-dp{dp}-tp{tp}-n{nnodes}.json"
    path.write_text(json.dumps(config))
    return path


class ServiceRun:
    """A ServiceLaunch of a worker script, its events recorded as they are taken."""

    def __init__(self, config: Path, script: str, env: dict[str, str] | None = None,
                 max_restarts: int = 1, grace_period: float = 2.0, **options):
        import io
        import os

        from pypto_serving.launcher.plan import LaunchSpec
        from pypto_serving.launcher.service import ServiceLaunch, service_plan

        spec_options = {k: options.pop(k) for k in ("nnodes", "node_rank", "master_addr",
                                                     "master_port", "log_dir")
                        if k in options}
        if "master_port" not in spec_options:
            spec_options["standalone"] = True
        spec = LaunchSpec(target=str(WORKERS / script), config=config,
                          max_restarts=max_restarts, grace_period=grace_period,
                          env={**os.environ, **(env or {})}, **spec_options)
        self.out, self.err = io.StringIO(), io.StringIO()
        self.launch = ServiceLaunch(service_plan(spec), stdout=self.out, stderr=self.err,
                                    **{"restart_backoff_s": 0.05, **options})
        self.events: list = []

    def start(self) -> ServiceRun:
        self.launch.start()
        return self

    def until(self, what, timeout: float = 60.0):
        """Take events until one satisfies `what(event)`; that event. Fails with every event
        seen (and the output) when none does in time or the launch ended first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            event = self.launch.next_event(timeout=min(0.5, deadline - time.monotonic()))
            if event is None:
                if self.launch.ended:
                    break
                continue
            self.events.append(event)
            if what(event):
                return event
        pytest.fail(f"no such event within {timeout}s; events: "
                    f"{[(e.kind, e.group, e.attempt, e.rank, e.cause) for e in self.events]}\n"
                    f"--- stdout ---\n{self.out.getvalue()}\n--- stderr ---\n{self.err.getvalue()}")

    def rest(self) -> list:
        """The remaining events of an ended launch."""
        while (event := self.launch.next_event(timeout=0.1)) is not None:
            self.events.append(event)
        return self.events

    def history(self, group: int) -> list[tuple[str, int]]:
        """(kind, attempt) of every event of `group`, in order."""
        return [(e.kind, e.attempt) for e in self.events if e.group == group]

    def stop(self):
        result = self.launch.stop(2.0)
        self.rest()
        return result


@pytest.fixture
def service(tmp_path):
    """Service test tools: start(config, script="service_worker.py", env=None,
    max_restarts=1, **ServiceLaunch options) -> a started ServiceRun (each is stopped at
    the end of the test); config(dp, tp=1, nnodes=1) -> a config file; process checks."""
    runs: list[ServiceRun] = []

    def start(config: Path, script: str = "service_worker.py", **kw) -> ServiceRun:
        runs.append(ServiceRun(config, script, **kw))
        return runs[-1].start()

    def config(dp: int, tp: int = 1, nnodes: int = 1) -> Path:
        return service_config(tmp_path, dp, tp, nnodes)

    yield SimpleNamespace(start=start, config=config, assert_gone=assert_gone,
                          running=running, workers=WORKERS)
    for run in runs:
        run.launch.stop(1.0)
