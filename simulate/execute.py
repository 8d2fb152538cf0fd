"""`pypto simulate --execute`, from the launching side: run layouts for real (CPU worker
processes, gloo, the executor's reference model) through the launcher as `pypto launch` does,
and set the bytes each group counted beside core's prediction, and the measured decode step
time beside the cost model's.

Imports no torch: the workers (execute_worker.py) do.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..core.calibration import spearman
from ..core.comm_bytes import group_step_bytes, table_dict
from ..core.config import ServingConfig
from ..core.cost_model import LinkModel, Workload, layout_cost
from ..core.errors import USAGE_ERROR
from ..core.hardware import HardwareSpec
from ..core.layout_search import cost_label
from ..core.loader import parse_config
from ..core.memory import weight_bytes
from ..core.topology import resolve_topology

WORKER_MODULE = "pypto_serving.simulate.execute_worker"
MAX_WEIGHT_BYTES = 256 << 20
"""Per rank: the reference model runs on CPU, so a real-sized shape is refused."""
EXECUTE_BATCH = 8
EXECUTE_PROMPT = 16
EXECUTE_DECODE_STEPS = 8
WARMUP_DECODE_STEPS = 2  # execute_worker.WARMUP_DECODE_STEPS (that module imports torch)
FORWARD_KINDS = ("tp", "pp", "ep", "dp")


class ExecuteError(RuntimeError):
    """A run that failed (its output attached); `code` 1. A layout refused before anything
    started is a usage error: `code` 2 (USAGE_ERROR)."""

    code = 1


class ExecuteRefused(ExecuteError):
    code = USAGE_ERROR


class _Lines:
    """The launcher's output, kept to show if the job fails."""

    def __init__(self) -> None:
        self.kept: list[str] = []
        self._partial = ""

    def write(self, text: str) -> int:
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()
        self.kept.extend(lines)
        return len(text)

    def flush(self) -> None:
        pass


def cpu_config(cfg: ServingConfig) -> ServingConfig:
    """The layout on this host: one node, one CPU process per rank."""
    data = cfg.model_dump(mode="json")
    data["cluster"] = {"nnodes": 1, "devices_per_node": cfg.parallel.world_size,
                       "platform": "cpu"}
    data["parallel"]["data_parallel_size_local"] = None
    return parse_config(data, "the layout on CPU")


def _check_small(cfg: ServingConfig) -> None:
    topo = resolve_topology(cfg)
    worst = max(weight_bytes(topo.rank_info(topo.layout.rank_of(dp=0, pp=s, tp=0)), cfg.model,
                             topo.expert_placement is not None) for s in range(topo.layout.pp))
    if worst > MAX_WEIGHT_BYTES:
        raise ExecuteRefused(
            f"--execute runs the reference model on CPU, but model {cfg.model.name} needs "
            f"{worst / (1 << 30):.1f} GiB of weights per rank in this layout (at most "
            f"{MAX_WEIGHT_BYTES >> 20} MiB here); use --model tiny-moe, small-moe or "
            "small-dense")
    if EXECUTE_PROMPT + WARMUP_DECODE_STEPS + EXECUTE_DECODE_STEPS + 1 > cfg.model.max_seq_len:
        raise ExecuteRefused(f"model {cfg.model.name}: max_seq_len {cfg.model.max_seq_len} is "
                           "shorter than the executed run needs")


def run_job(configs: Sequence[ServingConfig], batch: int, prompt_len: int,
            decode_steps: int, timeout_env: str = "120") -> list[dict[int, dict]]:
    """Launch the worker over `configs` (one world size); per layout, {rank: record}."""
    from ..launcher import LaunchError, LaunchSpec, launch

    with tempfile.TemporaryDirectory(prefix="pypto-simulate-") as tmp:
        work = Path(tmp)
        out = work / "out"
        out.mkdir()
        run_path = work / "run.json"
        run_path.write_text(json.dumps({
            "layouts": [c.model_dump(mode="json") for c in configs], "batch": batch,
            "prompt_len": prompt_len, "decode_steps": decode_steps}))
        env = dict(os.environ)
        env["PYPTO_COMM_TIMEOUT_S"] = timeout_env
        sink = _Lines()
        spec = LaunchSpec(target=WORKER_MODULE, module=True, args=[str(run_path), str(out)],
                          config=configs[0], standalone=True, env=env, grace_period=3.0)
        try:
            result = launch(spec, stdout=sink, stderr=sink, own_process=True)
        except LaunchError as e:
            raise ExecuteError(f"the launcher refused the run: {e}") from None
        if result.exit_code != 0:
            tail = "\n".join(sink.kept[-30:])
            raise ExecuteError(f"the executed run failed (exit {result.exit_code}):\n{tail}")
        records = {int(p.stem[4:]): json.loads(p.read_text()) for p in out.glob("rank*.json")}
    return [{rank: recs[i] for rank, recs in records.items()} for i in range(len(configs))]


def compare_bytes(cfg: ServingConfig, ranks: dict[int, dict]) -> list[dict[str, Any]]:
    """Per step and group: the op table core predicts and the one the members counted."""
    topo = resolve_topology(cfg)
    dp = topo.layout.dp
    rows = []
    steps = len(next(iter(ranks.values()))["steps"])
    for step in range(steps):
        by_replica = {r["dp"]: r["steps"][step] for r in ranks.values()}
        tokens = [by_replica[d]["tokens"] for d in range(dp)]
        seqs = [by_replica[d]["seqs"] for d in range(dp)]
        phase = next(iter(ranks.values()))["steps"][step]["phase"]
        for kind in FORWARD_KINDS:
            if kind not in topo.group_kinds:
                continue
            members: dict[int, list[dict]] = {}
            for rec in ranks.values():
                members.setdefault(rec["groups"][kind], []).append(rec)
            for index, recs in sorted(members.items()):
                counted: dict[str, dict[str, int]] = {}
                for rec in recs:
                    for op, v in rec["steps"][step]["comm"].get(kind, {}).items():
                        c = counted.setdefault(op, {"calls": 0, "bytes": 0})
                        c["calls"] += v["calls"]
                        c["bytes"] += v["bytes"]
                first = min(recs, key=lambda r: r["rank"])
                predicted = table_dict(group_step_bytes(topo, kind, first["pp"], tokens, seqs,
                                                        replica=first["dp"]))
                rows.append({
                    "step": f"{phase} {step}", "kind": kind, "index": index,
                    "predicted": sum(v["bytes"] for v in predicted.values()),
                    "counted": sum(v["bytes"] for v in counted.values()),
                    "predicted_ops": predicted, "counted_ops": dict(sorted(counted.items())),
                    "equal": predicted == dict(sorted(counted.items())),
                })
    return rows


def measured_decode_seconds(ranks: dict[int, dict]) -> float:
    """Median over decode steps of the slowest rank's time for that step."""
    steps = next(iter(ranks.values()))["steps"]
    per_step = [max(r["steps"][i]["seconds"] for r in ranks.values())
                for i, s in enumerate(steps) if s["phase"] == "decode"]
    return statistics.median(per_step)


def execute_layouts(configs: Sequence[ServingConfig], hw: HardwareSpec,
                    links: LinkModel | None = None, batch: int = EXECUTE_BATCH,
                    prompt_len: int = EXECUTE_PROMPT,
                    decode_steps: int = EXECUTE_DECODE_STEPS) -> dict[str, Any]:
    """Run every layout (same world size) once, in one launched job; the `execute` section
    of the simulate document."""
    worlds = {c.parallel.world_size for c in configs}
    if len(worlds) != 1:
        raise ExecuteRefused(f"layouts of one world size run in one job, got {sorted(worlds)}")
    cpu = [cpu_config(c) for c in configs]
    for c in cpu:
        _check_small(c)
    records = run_job(cpu, batch, prompt_len, decode_steps)
    context = prompt_len + WARMUP_DECODE_STEPS + (decode_steps + 1) // 2
    work = Workload(batch=batch, context=context, prompt_len=prompt_len)
    layouts = []
    for cfg, ranks in zip(cpu, records, strict=True):
        groups = compare_bytes(cfg, ranks)
        cost = layout_cost(cfg, hw, work, links)
        layouts.append({
            "label": cost_label(cost), "groups": groups,
            "bytes_equal": all(g["equal"] for g in groups),
            "predicted_decode_s": cost.decode.seconds,
            "measured_decode_s": measured_decode_seconds(ranks),
        })
    predicted = [lay["predicted_decode_s"] for lay in layouts]
    measured = [lay["measured_decode_s"] for lay in layouts]
    return {
        "platform": "cpu", "backend": "gloo", "batch": batch, "prompt_len": prompt_len,
        "decode_steps": decode_steps, "hardware": hw.name, "layouts": layouts,
        "rank_correlation": spearman(predicted, measured) if len(layouts) > 1 else None,
    }
