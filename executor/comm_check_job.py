"""One whole check-comm job, from the launching side: start the comm_check workers through
the launcher (as `pypto launch` does), follow rank 0's progress, and assemble core's report
from the ranks' records, their missed deadlines and the launcher's failures.

Imports no torch: the workers do. The CLI and scripts/bench_comm.py call `run_job`.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..core.comm_check import EXIT_DEADLINE, PROGRESS_PREFIX, CheckSettings, plan_steps
from ..core.comm_report import build_report
from ..core.config import ServingConfig
from ..core.report import layout_summary
from ..core.topology import resolve_topology

WORKER_MODULE = "pypto_serving.executor.comm_check"


class WorkerLines:
    """A text stream for the launcher's output: `[rankN]:` lines and launcher messages.
    Rank 0's progress lines go to `on_progress(done, total)`; everything else is kept, to be
    shown if the job fails."""

    def __init__(self, on_progress: Callable[[int, int], None] | None = None):
        self.on_progress = on_progress
        self.kept: list[str] = []
        self._partial = ""

    def write(self, text: str) -> int:
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()
        for line in lines:
            _, marker, rest = line.partition(PROGRESS_PREFIX)
            if marker and line.startswith("[rank"):
                done, _, total = rest.partition("/")
                if self.on_progress is not None and done.isdigit() and total.isdigit():
                    self.on_progress(int(done), int(total))
            else:
                self.kept.append(line)
        return len(text)

    def flush(self) -> None:
        pass


@dataclass
class JobResult:
    """The report, the launcher's exit code, and what the workers and launcher printed."""

    report: dict
    exit_code: int
    output: list[str] = field(default_factory=list)
    signal: str | None = None


def comm_timeout_env(settings: CheckSettings) -> str:
    """The process groups' own timeout: well past the check's deadline, so the deadline
    (which names who is missing) always fires first."""
    return str(settings.timeout_s * 2 + 30)


def assemble_report(config: ServingConfig, settings: CheckSettings, records: dict[int, dict],
                    deadlines: list[dict] = (), failures: list[dict] = ()) -> dict:
    """Core's report of the ranks' records, with this layout's facts."""
    topology = resolve_topology(config)
    first = records[min(records)] if records else {}
    platform = first.get("platform") or config.cluster.platform
    if platform != config.cluster.platform:  # 'auto' as the launcher resolved it
        config = config.model_copy(update={
            "cluster": config.cluster.model_copy(update={"platform": platform})})
    summary = {
        "summary": layout_summary(config), "world_size": topology.world_size,
        "layout": {"dp": config.parallel.data_parallel_size,
                   "pp": config.parallel.pipeline_parallel_size,
                   "tp": config.parallel.tensor_parallel_size,
                   "ep": config.parallel.ep_size if topology.expert_placement else 0},
        "platform": platform, "backend": first.get("backend", "unknown"),
    }
    counts = {k: (topology.num_groups(k), topology.layout.group_size(k))
              for k in settings.kinds}
    return build_report(summary, settings, plan_steps(topology, settings), records,
                        deadlines, failures, counts)


def run_inside_launch(config: ServingConfig, settings: CheckSettings) -> dict | None:
    """This process is one rank of an existing launch (`pypto launch ... -m
    pypto_serving.cli.entry check-comm`): run the check here; rank 0 returns the report of
    every rank, the others None. A missed deadline ends the detecting rank (its stderr line
    names the missing ranks) and the launcher stops the rest."""
    from .comm_check import run_check

    with tempfile.TemporaryDirectory(prefix="pypto-check-comm-") as tmp:
        records = run_check(settings, Path(tmp), gather=True)
    return None if records is None else assemble_report(config, settings, records)


def run_job(config: ServingConfig, settings: CheckSettings,
            on_progress: Callable[[int, int], None] | None = None,
            grace_period: float = 3.0) -> JobResult:
    """Launch the check on this node and return its report. Raises LaunchError for what the
    launcher refuses before starting anything."""
    from ..launcher import LaunchSpec, launch

    with tempfile.TemporaryDirectory(prefix="pypto-check-comm-") as tmp:
        work = Path(tmp)
        out_dir = work / "out"
        out_dir.mkdir()
        settings_path = work / "settings.json"
        settings_path.write_text(json.dumps(settings.to_dict()))
        env = dict(os.environ)
        env["PYPTO_COMM_TIMEOUT_S"] = comm_timeout_env(settings)
        sink = WorkerLines(on_progress)
        spec = LaunchSpec(target=WORKER_MODULE, module=True,
                          args=[str(settings_path), str(out_dir)], config=config,
                          standalone=True, env=env, grace_period=grace_period)
        result = launch(spec, stdout=sink, stderr=sink, own_process=True)
        records = {int(p.stem[4:]): json.loads(p.read_text())
                   for p in out_dir.glob("rank*.json") if p.stem[4:].isdigit()}
        deadlines = [json.loads(p.read_text()) for p in out_dir.glob("rank*.deadline.json")]
    failures = [{"rank": f.rank, "how": f.how(), "error": f.error, "tail": list(f.tail)}
                for f in result.failures if f.returncode != EXIT_DEADLINE]
    report = assemble_report(config, settings, records, deadlines, failures)
    if result.exit_code != 0 and not report["failures"] and not report["deadlines"] \
            and result.signal is None:
        # the launcher failed for a reason that is no worker's (the zygote died, say)
        report["failures"].append({"rank": -1, "how": result.cause or
                                   f"it ended with exit code {result.exit_code}",
                                   "error": None, "tail": []})
        report["ok"] = report["complete"] = False
    sink.write("\n")
    return JobResult(report, result.exit_code, sink.kept, result.signal)
