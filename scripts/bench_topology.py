"""Benchmark topology resolution: core's closed-form lookups against materializing the world.

Times (median of --runs runs, milliseconds):
  * a 1,048,576-rank layout (DP 4096 x PP 16 x TP 16, MoE with EP = DP x TP = 65,536):
    validating and resolving it, and answering "which groups and experts does rank R have"
    for a few R, without enumerating the world;
  * enumerating every group of every kind of 65,536-rank layouts.
The baselines are the usual way of doing it (vLLM / Megatron style, written here from the
idea, not copied): materialize arange(W).reshape(DP, PP, TP), list every group of every
kind, and scan the lists for the rank; or loop over every rank and bucket it into groups.

Usage: .venv/bin/python scripts/bench_topology.py [--runs 5] [--plain]
"""

from __future__ import annotations

import argparse
import gc
import platform
import statistics
import time
from collections import defaultdict
from collections.abc import Callable

import numpy as np

from pypto_serving.core.loader import parse_config
from pypto_serving.core.topology import Topology, resolve_topology

PROBE_RANKS = (0, 123_457, 524_288, 1_048_575)


def config(dp: int, pp: int, tp: int, devices_per_node: int = 8, ep: bool = True):
    """A MoE config that validates at this size: EP = DP x TP ranks need that many experts
    (each then holds exactly one); heads, kv heads and MLP width divisible by TP."""
    world = dp * pp * tp
    return parse_config({
        "parallel": {"data_parallel_size": dp, "pipeline_parallel_size": pp,
                     "tensor_parallel_size": tp, "enable_expert_parallel": ep},
        "model": {"name": "bench-moe", "num_layers": 4 * pp, "hidden_size": 8192,
                  "num_attention_heads": 64, "num_kv_heads": 16, "intermediate_size": 2048,
                  "num_experts": dp * tp, "experts_per_token": 8, "vocab_size": 128256},
        "cluster": {"nnodes": world // devices_per_node, "devices_per_node": devices_per_node},
    })


def raw_config(dp: int, pp: int, tp: int) -> dict:
    cfg = config(dp, pp, tp)
    return cfg.model_dump(mode="json")


def median_ms(fn: Callable[[], object], runs: int) -> float:
    """Median wall time; the garbage collector is emptied before and paused during each run
    (as timeit does), so one run does not pay for the garbage of another."""
    times = []
    for _ in range(runs):
        gc.collect()
        gc.disable()
        try:
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1e3)
        finally:
            gc.enable()
    return statistics.median(times)


# --- core ---------------------------------------------------------------------------------

def core_rank_query(topo: Topology, rank: int, with_ep: bool) -> tuple:
    """What a worker asks at start-up: its coordinates, experts and groups."""
    info = topo.rank_info(rank)
    kinds = [k for k in topo.group_kinds if k != "world" and (with_ep or k != "ep")]
    return info, [topo.group(kind, rank) for kind in kinds]


def core_enumerate(topo: Topology) -> int:
    n = 0
    for kind in topo.group_kinds:
        for group in topo.groups(kind):
            n += group.size
    return n


# --- baselines ----------------------------------------------------------------------------

def mesh_groups(dp: int, pp: int, tp: int) -> dict[str, list[list[int]]]:
    """Every group of every kind as lists, from a materialized DP x PP x TP rank mesh."""
    mesh = np.arange(dp * pp * tp).reshape(dp, pp, tp)
    return {
        "tp": mesh.reshape(-1, tp).tolist(),
        "pp": mesh.transpose(0, 2, 1).reshape(-1, pp).tolist(),
        "dp": mesh.transpose(1, 2, 0).reshape(-1, dp).tolist(),
        "ep": mesh.transpose(1, 0, 2).reshape(pp, -1).tolist(),
        "world": [mesh.reshape(-1).tolist()],
    }


def mesh_rank_query(dp: int, pp: int, tp: int, num_experts: int, rank: int) -> tuple:
    """Build every group, then scan each kind's list for the one holding `rank`; the
    experts come from a full placement table of the EP group."""
    groups = mesh_groups(dp, pp, tp)
    mine = {kind: next(g for g in gs if rank in g) for kind, gs in groups.items()
            if kind != "world"}
    ep_size = dp * tp
    table: list[list[int]] = [[] for _ in range(ep_size)]
    base, extra = divmod(num_experts, ep_size)
    e = 0
    for r in range(ep_size):
        for _ in range(base + (r < extra)):
            table[r].append(e)
            e += 1
    return mine, table[mine["ep"].index(rank)]


def loop_groups(dp: int, pp: int, tp: int) -> dict[str, list[list[int]]]:
    """Every group by a loop over every rank, bucketing it by the coordinates it shares."""
    buckets: dict[str, defaultdict] = {k: defaultdict(list) for k in ("tp", "pp", "dp", "ep")}
    for rank in range(dp * pp * tp):
        t, p, d = rank % tp, rank // tp % pp, rank // (tp * pp)
        buckets["tp"][(d, p)].append(rank)
        buckets["pp"][(d, t)].append(rank)
        buckets["dp"][(p, t)].append(rank)
        buckets["ep"][p].append(rank)
    out = {k: list(b.values()) for k, b in buckets.items()}
    out["world"] = [list(range(dp * pp * tp))]
    return out


# --- report -------------------------------------------------------------------------------

def run(runs: int) -> list[tuple[str, float, float | None, str]]:
    rows: list[tuple[str, float, float | None, str]] = []
    big = (4096, 16, 16)
    data = raw_config(*big)
    cfg = parse_config(data)
    topo = resolve_topology(cfg)
    assert topo.world_size == 1 << 20 and cfg.parallel.ep_size == 65536

    rows.append(("1M: validate config", median_ms(lambda: parse_config(data), runs),
                 None, "parse_config of the raw mapping"))
    rows.append(("1M: resolve topology", median_ms(lambda: resolve_topology(cfg), runs),
                 None, "nothing enumerated"))
    rank = PROBE_RANKS[1]
    rows.append((f"1M: rank {rank:,}, tp/pp/dp groups + experts",
                 median_ms(lambda: core_rank_query(topo, rank, with_ep=False), runs), None,
                 "RankInfo + 3 small groups"))
    num_experts = cfg.model.num_experts
    for rank in PROBE_RANKS:
        core = median_ms(lambda r=rank: core_rank_query(topo, r, with_ep=True), runs)
        base = median_ms(lambda r=rank: mesh_rank_query(*big, num_experts, r), runs)
        rows.append((f"1M: rank {rank:,}, all groups + experts", core, base,
                     "incl. its 65,536-rank EP group"))
        info, groups = core_rank_query(topo, rank, with_ep=True)
        ref_groups, ref_experts = mesh_rank_query(*big, num_experts, rank)
        assert {g.kind: list(g.ranks) for g in groups} == ref_groups
        assert list(info.experts) == ref_experts

    for shape in ((256, 16, 16), (4096, 1, 16)):
        small = resolve_topology(config(*shape))
        label = " x ".join(f"{d} {n}" for d, n in zip(("DP", "PP", "TP"), shape, strict=True))
        core = median_ms(lambda t=small: core_enumerate(t), runs)
        mesh = median_ms(lambda s=shape: mesh_groups(*s), runs)
        loop = median_ms(lambda s=shape: loop_groups(*s), runs)
        counts = sum(small.num_groups(k) for k in small.group_kinds)
        note = f"{counts:,} groups"
        rows.append((f"64K ({label}): every group vs numpy mesh", core, mesh, note))
        rows.append((f"64K ({label}): every group vs per-rank loop", core, loop, note))
        reference = mesh_groups(*shape)  # same groups, same order
        for kind in small.group_kinds:
            assert [list(g.ranks) for g in small.groups(kind)] == reference[kind], kind
    return rows


def render(rows, runs: int, plain: bool = False) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        plain = True
    if plain:  # a Markdown table, as pasted into docs/benchmarks.md
        print(f"median of {runs} runs\n")
        print("| task | core ms | baseline ms | baseline / core | note |")
        print("| --- | ---: | ---: | ---: | --- |")
        for task, core, base, note in rows:
            b, r = ("-", "-") if base is None else (f"{base:.1f}", _ratio(base / core))
            print(f"| {task} | {core:.3f} | {b} | {r} | {note} |")
        return
    table = Table(title=f"topology resolution, median of {runs} runs ({platform.machine()}, "
                        f"Python {platform.python_version()})")
    for col, justify in (("task", "left"), ("core ms", "right"), ("baseline ms", "right"),
                         ("baseline / core", "right"), ("note", "left")):
        table.add_column(col, justify=justify)
    for task, core, base, note in rows:
        table.add_row(task, f"{core:.3f}", "-" if base is None else f"{base:.1f}",
                      "-" if base is None else _ratio(base / core), note)
    Console(width=120).print(table)


def _ratio(x: float) -> str:
    return f"{x:,.0f}x" if x >= 10 else f"{x:.2f}x"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="runs per measurement (median)")
    parser.add_argument("--plain", action="store_true", help="print a Markdown table")
    args = parser.parse_args()
    render(run(args.runs), args.runs, args.plain)


if __name__ == "__main__":
    main()
