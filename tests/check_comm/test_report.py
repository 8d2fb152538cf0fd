"""core's check-comm rules, without processes: sizes, steps, nccl-tests' factors, and the
report's straggler and deadline analysis on hand-made rank records."""

from __future__ import annotations

import pytest

from pypto_serving.core.comm_check import (
    CheckSettings,
    CheckUsageError,
    element_count,
    parse_sizes,
    plan_steps,
    uneven_splits,
)
from pypto_serving.core.comm_report import build_report, bus_factor
from pypto_serving.core.loader import resolve_config
from pypto_serving.core.topology import resolve_topology

MiB = 1024**2


def test_size_sweeps_double_like_nccl_tests():
    assert parse_sizes("8B:64B") == (8, 16, 32, 64)
    sweep = parse_sizes("8B:256MB")
    assert sweep[0] == 8 and sweep[-1] == 256 * MiB and len(sweep) == 26
    assert parse_sizes("1KB:1MB:x4") == (1024, 4096, 16384, 65536, 262144, MiB)
    assert parse_sizes("1MiB,1KB,1KB") == (1024, MiB)
    with pytest.raises(CheckUsageError, match="--sizes 3XB"):
        parse_sizes("3XB")


@pytest.mark.parametrize("op, n, factor", [
    ("all_reduce", 2, 1.0), ("all_reduce", 8, 1.75), ("all_gather", 4, 0.75),
    ("reduce_scatter", 8, 0.875), ("all_to_all", 4, 0.75), ("broadcast", 8, 1.0),
    ("send_recv", 2, 1.0), ("barrier", 4, None), ("all_reduce", 1, None),
])
def test_bus_factors_are_nccl_tests(op, n, factor):
    assert bus_factor(op, n) == factor


def test_buffers_split_evenly_and_uneven_splits_differ_per_pair():
    assert element_count("all_gather", 8, 4) == 4  # 2 floats rounded up to one per rank
    assert element_count("all_reduce", 8, 4) == 2
    assert element_count("all_to_all", 1000, 3) == 249
    splits = [uneven_splits(1024, 4, s) for s in range(4)]
    assert all(abs(sum(row) - 1024) < 4 for row in splits)
    assert len({tuple(row) for row in splits}) == 4 and all(min(r) > 0 for r in splits)


def _topology(**parallel):
    cfg = resolve_config(overrides={"parallel": parallel, "cluster": {
        "devices_per_node": parallel.get("pipeline_parallel_size", 1)
        * parallel.get("tensor_parallel_size", 1) * parallel.get("data_parallel_size", 1)}})
    return resolve_topology(cfg)


def test_steps_cover_every_stage_boundary_and_skip_groups_of_one():
    topo = _topology(pipeline_parallel_size=4)
    settings = CheckSettings(kinds=("tp", "pp", "world"), ops=("send_recv", "broadcast"),
                             sizes=(8, 64))
    steps = plan_steps(topo, settings)
    assert [(s.kind, s.op, s.variant, s.size_bytes) for s in steps] == [
        ("pp", "send_recv", "0->1", 8), ("pp", "send_recv", "0->1", 64),
        ("pp", "send_recv", "1->2", 8), ("pp", "send_recv", "1->2", 64),
        ("pp", "send_recv", "2->3", 8), ("pp", "send_recv", "2->3", 64),
        ("world", "broadcast", "", 8), ("world", "broadcast", "", 64)]
    assert [s.index for s in steps] == list(range(len(steps)))


def _entry(step, members, enter, leave, dur_us=100.0, wrong=0):
    return {"step": step, "group": 0, "members": members, "count": 16, "bytes": 64,
            "enter_ns": enter, "leave_ns": leave, "dur_ns": [dur_us * 1e3] * len(enter),
            "wrong": wrong, "bad_iters": int(bool(wrong)), "wrong_from": {}}


def test_the_straggler_is_the_rank_that_dawdles_not_the_one_it_made_wait():
    """Rank 2 spends 20 ms between calls; rank 0 is late too, but only because it left the
    previous call late (its own gaps are short): only rank 2 is a straggler."""
    ms = 1_000_000
    topo = _topology(data_parallel_size=3)
    settings = CheckSettings(kinds=("dp",), ops=("all_reduce",), sizes=(64, 128))
    steps = plan_steps(topo, settings)
    records = {}
    for rank in range(3):
        entries = []
        for step in steps:
            base = step.index * 1000 * ms
            if rank == 2:    # enters each call 20 ms after leaving the last
                enter = [base + i * 25 * ms + 20 * ms for i in range(5)]
                leave = [t + 5 * ms for t in enter]
            elif rank == 0:  # enters 20 ms late, right after leaving the last call late
                enter = [base + i * 25 * ms + 20 * ms - ms // 10 for i in range(5)]
                leave = [t + 25 * ms - ms // 10 for t in enter]
            else:
                enter = [base + i * 25 * ms for i in range(5)]
                leave = [t + 24 * ms for t in enter]
            entries.append(_entry(step.index, [0, 1, 2], enter, leave))
        records[rank] = {"rank": rank, "node": 0, "clock_sync_ns": 0, "complete": True,
                         "steps": entries}
    report = build_report({"world_size": 3, "platform": "cpu", "backend": "gloo"},
                          settings, steps, records, group_counts={"dp": (1, 3)})
    assert [(s["rank"], s["late_steps"]) for s in report["stragglers"]] == [(2, 2)]
    assert report["ok"]
    lag = report["results"][0]["rank_lag_us"]
    assert lag["0"] > 19_000 and lag["2"] > 19_000  # both entered late ...
    assert report["results"][0]["late"] == [2]      # ... one of them held the group up


def test_deadlines_of_several_ranks_merge_into_one_per_group():
    topo = _topology(tensor_parallel_size=2)
    settings = CheckSettings(kinds=("tp",), ops=("all_reduce",), sizes=(64,))
    steps = plan_steps(topo, settings)
    base = {"step": 0, "kind": "tp", "group": 0, "members": [0, 1], "op": "all_reduce",
            "variant": "", "size_bytes": 64, "timeout_s": 2.0, "chain": []}
    seen = [{**base, "rank": 0, "waited_s": 2.3, "missing": [1], "waiting": [0],
             "root": [1]}]
    report = build_report({"world_size": 2, "platform": "cpu", "backend": "gloo"}, settings,
                          steps, {}, seen, group_counts={"tp": (1, 2)})
    (d,) = report["deadlines"]
    assert (d["missing"], d["waiting"], d["root"], d["detected_by"]) == ([1], [0], [1], [0])
    assert d["waited_s"] == 2.3 and not report["ok"]


def test_the_launching_side_imports_no_torch():
    """core's check-comm modules, the job and the CLI command run in the launching process,
    which never needs torch (the workers do)."""
    import subprocess
    import sys

    code = ("import sys; import pypto_serving.core.comm_report, "
            "pypto_serving.executor.comm_check_job, pypto_serving.cli.check_comm_cmd, "
            "pypto_serving.cli.check_comm_render; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
