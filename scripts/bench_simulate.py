"""Benchmark `pypto simulate` at scale: one layout of 1,048,576 ranks, and --search over
every layout of 4,096 ranks; in process (medians of --repeat runs) and as the CLI a user
runs (one process each). Beside them, the baseline a per-group simulator would pay: counting
node crossings by enumerating every group (what `groups_crossing_nodes` avoids).

    .venv/bin/python scripts/bench_simulate.py [--repeat 5]

With --calibration FILE... (`pypto check-comm --json` reports of this host) it also runs
seven layouts of tiny-moe on 4 CPU ranks for real and prints, per layout, the calibrated
model's decode step time beside the measured one, each error, and the rank correlation.
Calibrated means: links fitted to the reports, and the host's per-layer and per-expert time
measured on one rank (--host-overheads) just before.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

from pypto_serving.core.config import ServingConfig
from pypto_serving.core.cost_model import Workload, groups_crossing_nodes, layout_cost
from pypto_serving.core.hardware import hardware_profile
from pypto_serving.core.layout_search import cluster_for, search
from pypto_serving.core.loader import model_profile, parse_config
from pypto_serving.core.topology import resolve_topology

MILLION = 1 << 20


def _median_s(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _config(model: str, dp: int, pp: int, tp: int, ep: bool, hw, **model_overrides):
    m = model_profile(model).model_dump() | model_overrides
    return parse_config({"parallel": {"data_parallel_size": dp, "pipeline_parallel_size": pp,
                                      "tensor_parallel_size": tp, "enable_expert_parallel": ep},
                         "model": m, "cluster": cluster_for(dp * pp * tp, hw)})


def _enumerated_crossings(topo, kind: str) -> int:
    per = topo.config.cluster.devices_per_node
    return sum(g.ranks[0] // per != g.ranks[-1] // per for g in topo.groups(kind))


def _cli_s(args: list[str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pypto_serving.cli.entry", "simulate", *args,
                           "--json"], capture_output=True, text=True, timeout=600)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"pypto simulate {' '.join(args)} failed:\n{proc.stderr}")
    return elapsed


CALIBRATION_LAYOUTS = [  # (dp, pp, tp, ep) of tiny-moe on 4 CPU ranks
    (4, 1, 1, False), (2, 1, 2, False), (1, 2, 2, False), (1, 1, 4, False), (1, 4, 1, False),
    (2, 1, 2, True), (4, 1, 1, True),
]


def calibration_table(paths: list[str], rounds: int) -> None:
    """The layouts run `rounds` times, interleaved (this host's load drifts); per layout the
    median measured decode step beside the predictions: the shipped cpu-host profile, and
    calibrated (links fitted to the check-comm reports; host overheads measured just before
    with as many processes as the layouts have ranks)."""
    from pathlib import Path

    from pypto_serving.core.calibration import calibrate, spearman
    from pypto_serving.core.cost_model import LinkModel
    from pypto_serving.simulate.execute import WARMUP_DECODE_STEPS, execute_layouts

    hw = hardware_profile("cpu-host")
    links, _ = calibrate([Path(p) for p in paths], hw)
    layer_us, expert_us = host_overheads(rounds)
    host = hw.model_copy(update={"layer_overhead_us": layer_us, "expert_overhead_us": expert_us})
    configs = [_config("tiny-moe", dp, pp, tp, ep, hw) for dp, pp, tp, ep in CALIBRATION_LAYOUTS]
    runs = [execute_layouts(configs, host, links, decode_steps=16) for _ in range(rounds)]
    layouts = runs[0]["layouts"]
    measured = [statistics.median(r["layouts"][i]["measured_decode_s"] for r in runs)
                for i in range(len(layouts))]
    calibrated = [lay["predicted_decode_s"] for lay in layouts]
    work = Workload(batch=runs[0]["batch"], prompt_len=runs[0]["prompt_len"],
                    context=runs[0]["prompt_len"] + WARMUP_DECODE_STEPS + (16 + 1) // 2)
    shipped = [layout_cost(c, hw, work, LinkModel.of(hw)).decode.seconds for c in configs]
    print(f"\ndecode step, tiny-moe on 4 CPU ranks (gloo), batch {runs[0]['batch']}, "
          f"{runs[0]['prompt_len']}-token prompts; measured: median over {rounds} rounds of "
          f"the median of {runs[0]['decode_steps']} steps")
    print(f"{'layout':<36} {'measured ms':>11} {'calibrated ms':>13} {'error':>7} "
          f"{'shipped profile ms':>18} {'error':>7}  per-round ms              bytes equal")
    for i, lay in enumerate(layouts):
        rounds_ms = " ".join(f"{r['layouts'][i]['measured_decode_s'] * 1e3:.1f}" for r in runs)
        equal = all(r["layouts"][i]["bytes_equal"] for r in runs)
        print(f"{lay['label']:<36} {measured[i] * 1e3:11.2f} {calibrated[i] * 1e3:13.2f} "
              f"{calibrated[i] / measured[i] - 1:+7.0%} {shipped[i] * 1e3:18.2f} "
              f"{shipped[i] / measured[i] - 1:+7.0%}  {rounds_ms:<25} {equal}")
    print(f"rank correlation (Spearman), predicted vs measured decode step: calibrated "
          f"{spearman(calibrated, measured):+.3f}, shipped profile "
          f"{spearman(shipped, measured):+.3f}")


def host_overheads(rounds: int) -> tuple[float, float]:
    """cpu-host's layer_overhead_us and expert_overhead_us on this machine: the executor's
    decode step (the same worker, batch and prompts as the layouts) on ONE rank, tiny-moe
    dense and MoE, median over `rounds` runs: no communication, no sharing of cores."""
    from pypto_serving.simulate.execute import execute_layouts

    hw = hardware_profile("cpu-host")
    spec = model_profile("tiny-moe")
    moe = _config("tiny-moe", 1, 1, 1, False, hw)
    dense = _config("tiny-moe", 1, 1, 1, False, hw, num_experts=0)
    runs = [execute_layouts([dense, moe], hw, decode_steps=16) for _ in range(rounds)]
    t_dense = statistics.median(r["layouts"][0]["measured_decode_s"] for r in runs)
    t_moe = statistics.median(r["layouts"][1]["measured_decode_s"] for r in runs)
    batch = runs[0]["batch"]
    k, e = spec.experts_per_token, spec.num_experts
    touched = e * (1 - (1 - 1 / e) ** (batch * k))
    layer_us = t_dense / spec.num_layers * 1e6
    expert_us = max(0.0, (t_moe - t_dense) / spec.num_layers / touched * 1e6)
    print(f"host overheads: one rank, tiny-moe 4 layers, decode of {batch} seqs, median of "
          f"{rounds} runs: dense {t_dense * 1e3:.2f} ms, MoE {t_moe * 1e3:.2f} ms -> "
          f"layer_overhead_us {layer_us:.0f}, expert_overhead_us {expert_us:.0f} "
          f"({touched:.2f} experts run per layer)")
    return layer_us, expert_us


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--calibration", nargs="+",
                    help="`pypto check-comm --json` reports of this host")
    ap.add_argument("--only-calibration", action="store_true")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--host-overheads", action="store_true",
                    help="measure cpu-host's per-layer and per-expert host time, and stop")
    args = ap.parse_args()
    if args.host_overheads:
        host_overheads(args.rounds)
        return
    if args.calibration:
        calibration_table(args.calibration, args.rounds)
        if args.only_calibration:
            return
    hw = hardware_profile("h200-nvlink-ib")
    work = Workload()
    dense = _config("llama-8b-shape", 4096, 32, 8, False, hw)
    moe = _config("deepseek-v3-shape", 8192, 16, 8, True, hw, num_experts=65536)
    rows = []
    for name, cfg in (("1M ranks, llama-8b DP 4096 x PP 32 x TP 8", dense),
                      ("1M ranks, 65,536-expert MoE DP 8192 x PP 16 x TP 8 + EP 65536", moe)):
        assert cfg.parallel.world_size == MILLION
        rows.append((name + ": layout_cost", _median_s(lambda c=cfg: layout_cost(c, hw, work),
                                                       args.repeat)))
        topo = resolve_topology(cfg)
        rows.append((name + ": crossings, closed form (all kinds)", _median_s(
            lambda t=topo: [groups_crossing_nodes(t, k) for k in t.group_kinds], args.repeat)))
        rows.append((name + ": crossings, every group enumerated (baseline)", _median_s(
            lambda t=topo: [_enumerated_crossings(t, k) for k in t.group_kinds], 1)))
    base = ServingConfig(model=model_profile("deepseek-v3-shape"))
    result = search(base, hw, work, 4096)
    rows.append((f"search, 4,096 ranks, deepseek-v3 ({result.considered} candidates, "
                 f"{len(result.ranked)} valid)",
                 _median_s(lambda: search(base, hw, work, 4096), args.repeat)))
    rows.append(("CLI: pypto simulate --ranks 1048576 -dp 4096 -pp 32 -tp 8 "
                 "--model llama-8b-shape --json",
                 _cli_s(["--ranks", str(MILLION), "-dp", "4096", "-pp", "32", "-tp", "8",
                         "--model", "llama-8b-shape"])))
    rows.append(("CLI: pypto simulate --ranks 4096 --search --model deepseek-v3-shape --json",
                 _cli_s(["--ranks", "4096", "--search", "--model", "deepseek-v3-shape"])))
    width = max(len(r[0]) for r in rows)
    print(f"{'case':<{width}}  {'ms':>10}")
    for name, seconds in rows:
        print(f"{name:<{width}}  {seconds * 1e3:10.3f}")


if __name__ == "__main__":
    main()
