"""The report of `pypto check-comm`, schema `pypto.commcheck/v1`: bandwidth as nccl-tests
defines it, wrong elements, stragglers and missed deadlines, from the ranks' raw records.

Pure Python (no torch), so `pypto simulate --calibration` can read and check a report.
Stable: fields are only ever added. Definitions (nccl-tests' PERFORMANCE.md):
- time: per rank, the median of its timed iterations; a group's time is its slowest rank's.
- algbw = bytes / time, bytes being the op's buffer (all_gather: the output; reduce_scatter
  and all_to_all: the input; uneven all_to_all: the mean over ranks of what each sends).
- wrong: every member checks the results of `checked` extra calls on fresh data (after the
  timed ones, as nccl-tests checks apart from timing); wrong is the sum over members of each
  member's worst call, wrong_from the peers whose parts of the answer were wrong.
- busbw = algbw x the op's factor for n ranks (`bus_factor`), comparable across ops and n.
- lag: how late a rank enters an op after its group's first rank (one clock per node; nodes
  aligned by a barrier at start), median over iterations.
- gap: the time a rank spends between two calls of a step (outside the op, on its own
  clock), median over iterations. A rank whose gap stands out from its peers' holds its
  group up: it is late in that step, and late in most of its steps makes a straggler. (Lag
  alone would also blame a rank that only left the previous call late, waiting for the
  real straggler.)
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from typing import Any

from .comm_check import CheckSettings, CheckStep

SCHEMA = "pypto.commcheck/v1"
STRAGGLER_MIN_GAP_US = 5000.0
"""A rank is late (in one step) if its gap exceeds its peers' median by this much ..."""
STRAGGLER_REL_GAP = 0.5
"""... and by this fraction of the step's time; a straggler is late in most of its steps."""
ONE_RANK_NOTE = ("bus bandwidth does not apply to one rank: no data crosses a link; the "
                 "device path ran and every result was checked")


def bus_factor(op: str, n: int) -> float | None:
    """nccl-tests' bus-bandwidth factor: all_reduce 2(n-1)/n; all_gather, reduce_scatter,
    all_to_all (n-1)/n; broadcast and send/recv 1; None for a barrier or one rank."""
    if n < 2 or op == "barrier":
        return None
    if op == "all_reduce":
        return 2 * (n - 1) / n
    if op in ("all_gather", "reduce_scatter", "all_to_all"):
        return (n - 1) / n
    if op in ("broadcast", "send_recv"):
        return 1.0
    raise ValueError(f"no bus factor for op {op!r}")


def _median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else 0.0


def clock_offsets(records: dict[int, dict]) -> dict[int, int]:
    """What to subtract from each rank's clock to compare it with the others'. Ranks of one
    node share a clock (CLOCK_MONOTONIC), so each node's offset is the median of its ranks'
    clocks at the end of a common barrier; a barrier's exit skew (milliseconds on a busy
    host) never enters comparisons within a node."""
    by_node: dict[int, list[int]] = {}
    for rec in records.values():
        by_node.setdefault(rec.get("node", 0), []).append(rec.get("clock_sync_ns", 0))
    node_offset = {node: int(statistics.median(v)) for node, v in by_node.items()}
    return {r: node_offset[rec.get("node", 0)] for r, rec in records.items()}


def _lags(entries: dict[int, dict], offsets: dict[int, int]) -> dict[int, float]:
    """Median lag (us) of each member behind the first to enter, iteration by iteration."""
    iters = min(len(e["enter_ns"]) for e in entries.values())
    per_rank: dict[int, list[float]] = {r: [] for r in entries}
    for i in range(iters):
        enter = {r: e["enter_ns"][i] - offsets.get(r, 0) for r, e in entries.items()}
        first = min(enter.values())
        for r, t in enter.items():
            per_rank[r].append((t - first) / 1e3)
    return {r: _median(v) for r, v in per_rank.items()}


def _gaps(entries: dict[int, dict]) -> dict[int, float]:
    """Median time (us) each member spent between consecutive calls, on its own clock."""
    out = {}
    for r, e in entries.items():
        gaps = [(e["enter_ns"][i] - e["leave_ns"][i - 1]) / 1e3
                for i in range(1, min(len(e["enter_ns"]), len(e["leave_ns"])))]
        out[r] = _median(gaps)
    return out


def excess_gaps(gaps: dict[int, float]) -> dict[int, float]:
    """Each member's gap minus the median of the others' gaps."""
    return {r: g - _median([v for q, v in gaps.items() if q != r])
            for r, g in gaps.items() if len(gaps) > 1}


def late_ranks(excess: dict[int, float], time_us: float) -> list[int]:
    """Members whose gap stands out from their peers'."""
    bar = max(STRAGGLER_MIN_GAP_US, STRAGGLER_REL_GAP * time_us)
    return sorted(r for r, x in excess.items() if x > bar)


def result_row(step: CheckStep, group_index: int, entries: dict[int, dict],
               offsets: dict[int, int]) -> dict[str, Any]:
    """One group's numbers for one step, from its members' raw entries (rank -> entry)."""
    members = sorted(entries)
    n = len(next(iter(entries.values()))["members"])
    rank_time = {r: _median(e["dur_ns"]) / 1e3 for r, e in entries.items()}
    time_us = max(rank_time.values())
    nbytes = statistics.fmean(e["bytes"] for e in entries.values())
    factor = bus_factor(step.op, n)
    algbw = nbytes / (time_us * 1e-6) / 1e9 if time_us > 0 and step.op != "barrier" else None
    busbw = algbw * factor if algbw is not None and factor is not None else None
    wrong_from: dict[str, int] = {}
    for e in entries.values():
        for src, count in e["wrong_from"].items():
            wrong_from[src] = wrong_from.get(src, 0) + count
    lags = _lags(entries, offsets)
    excess = excess_gaps(_gaps(entries))
    return {
        "step": step.index, "kind": step.kind, "group": group_index,
        "ranks": list(next(iter(entries.values()))["members"]), "op": step.op,
        "variant": step.variant, "size_bytes": step.size_bytes, "bytes": nbytes,
        "count": max(e["count"] for e in entries.values()), "dtype": "float32",
        "time_us": time_us, "algbw_gbps": algbw, "busbw_gbps": busbw,
        "bus_factor": factor, "iters": min(len(e["dur_ns"]) for e in entries.values()),
        "wrong": sum(e["wrong"] for e in entries.values()),
        "wrong_by_rank": {str(r): entries[r]["wrong"] for r in members},
        "wrong_from": dict(sorted(wrong_from.items())),
        "bad_iters": max(e["bad_iters"] for e in entries.values()),
        "checked": min(e.get("checked", 0) for e in entries.values()),
        "rank_time_us": {str(r): rank_time[r] for r in members},
        "rank_lag_us": {str(r): lags[r] for r in members},
        "rank_excess_gap_us": {str(r): excess[r] for r in members if r in excess},
        "late": late_ranks(excess, time_us) if n > 1 else [],
    }


def stragglers(rows: list[dict]) -> list[dict]:
    """Ranks late in at least half of their group's steps (at least two steps)."""
    by_group: dict[tuple[str, int], list[dict]] = {}
    for row in rows:
        if row["op"] != "barrier" and len(row["ranks"]) > 1:
            by_group.setdefault((row["kind"], row["group"]), []).append(row)
    found = []
    for (kind, group), group_rows in by_group.items():
        counts: dict[int, int] = {}
        for row in group_rows:
            for r in row["late"]:
                counts[r] = counts.get(r, 0) + 1
        for r, late in sorted(counts.items()):
            if late * 2 >= len(group_rows) and late >= min(2, len(group_rows)):
                lags = [row["rank_lag_us"][str(r)] for row in group_rows
                        if str(r) in row["rank_lag_us"]]
                gaps = [row["rank_excess_gap_us"][str(r)] for row in group_rows
                        if str(r) in row["rank_excess_gap_us"]]
                found.append({"kind": kind, "group": group, "rank": r, "late_steps": late,
                              "steps": len(group_rows), "median_lag_us": _median(lags),
                              "median_excess_gap_us": _median(gaps)})
    return found


def _summary_key(row: dict) -> tuple[str, str]:
    """Rows summarised together: every stage boundary of a send_recv is one."""
    return row["op"], "" if row["op"] == "send_recv" else row["variant"]


def kind_summaries(rows: list[dict], group_counts: dict[str, tuple[int, int]]) -> list[dict]:
    """Per group kind and op: bandwidth at the largest size across groups (the slowest group
    named), the peak bus bandwidth, latency at the smallest size, and wrong elements."""
    out = []
    for kind, (groups, size) in group_counts.items():
        ops = []
        labels = list(dict.fromkeys(_summary_key(r) for r in rows if r["kind"] == kind))
        for op, variant in labels:
            mine = [r for r in rows if r["kind"] == kind and _summary_key(r) == (op, variant)]
            smallest = min(r["size_bytes"] for r in mine)
            largest = max(r["size_bytes"] for r in mine)
            at_large = [r for r in mine if r["size_bytes"] == largest]
            bws = [r["busbw_gbps"] for r in at_large if r["busbw_gbps"] is not None]
            slowest = min(at_large, key=lambda r: (r["busbw_gbps"] or 0.0, r["time_us"]))
            peak = [r for r in mine if r["busbw_gbps"] is not None]
            best = max(peak, key=lambda r: r["busbw_gbps"]) if peak else None
            ops.append({
                "op": op, "variant": variant,
                "largest_bytes": largest,
                "busbw_gbps": {"min": min(bws), "median": _median(bws), "max": max(bws)}
                if bws else None,
                "slowest_group": slowest["group"],
                "peak_busbw_gbps": best["busbw_gbps"] if best else None,
                "peak_size_bytes": best["size_bytes"] if best else None,
                "latency_us": max(r["time_us"] for r in mine if r["size_bytes"] == smallest),
                "latency_bytes": smallest,
                "wrong": sum(r["wrong"] for r in mine),
            })
        out.append({"kind": kind, "groups": groups, "group_size": size, "ops": ops,
                    "wrong": sum(o["wrong"] for o in ops)})
    return out


def merge_deadlines(records: Iterable[dict]) -> list[dict]:
    """The deadline reports of every rank, one per (step, group): who saw it, who never
    arrived, who arrived and waited, where each missing rank was (`chain`) and the ranks
    at the root of the wait."""
    merged: dict[tuple[int, int], dict] = {}
    for rec in sorted(records, key=lambda r: (r["step"], r["group"], r["rank"])):
        key = (rec["step"], rec["group"])
        entry = merged.setdefault(key, {
            "step": rec["step"], "kind": rec["kind"], "group": rec["group"],
            "ranks": rec["members"], "op": rec["op"], "variant": rec["variant"],
            "size_bytes": rec["size_bytes"], "timeout_s": rec["timeout_s"], "waited_s": 0.0,
            "detected_by": [], "missing": set(), "waiting": set(), "root": set(),
            "chain": rec.get("chain", [])})
        entry["detected_by"].append(rec["rank"])
        entry["waited_s"] = max(entry["waited_s"], rec.get("waited_s", 0.0))
        entry["missing"].update(rec["missing"])
        entry["waiting"].update(rec["waiting"])
        entry["root"].update(rec.get("root", []))
    out = []
    for entry in merged.values():
        entry["missing"] = sorted(entry["missing"])
        entry["waiting"] = sorted(set(entry["waiting"]) - set(entry["missing"]))
        entry["root"] = sorted(entry["root"])
        out.append(entry)
    return out


def build_report(summary: dict[str, Any], settings: CheckSettings,
                 steps: Sequence[CheckStep], records: dict[int, dict],
                 deadlines: Iterable[dict] = (), failures: Sequence[dict] = (),
                 group_counts: dict[str, tuple[int, int]] | None = None) -> dict[str, Any]:
    """The whole report. `summary`: layout facts (world_size, layout, platform, backend,
    summary line); `records`: rank -> its raw record (the worker's output); `deadlines`:
    every rank's missed-deadline record; `failures`: workers that died (the launcher's)."""
    offsets = clock_offsets(records)
    by_step: dict[int, dict[int, dict[int, dict]]] = {}
    for rank, rec in records.items():
        for entry in rec["steps"]:
            by_step.setdefault(entry["step"], {}).setdefault(entry["group"], {})[rank] = entry
    rows = []
    incomplete = []
    for step in steps:
        for group_index, entries in sorted(by_step.get(step.index, {}).items()):
            members = next(iter(entries.values()))["members"]
            if set(entries) != set(members):
                incomplete.append({"step": step.index, "group": group_index,
                                   "missing": sorted(set(members) - set(entries))})
                continue
            rows.append(result_row(step, group_index, entries, offsets))
    deadline_list = merge_deadlines(deadlines)
    world = summary.get("world_size", len(records))
    done = len(records) == world and all(rec.get("complete") for rec in records.values())
    wrong = sum(r["wrong"] for r in rows)
    counts = group_counts or {}
    return {
        "schema": SCHEMA,
        **summary,
        "settings": {"groups": list(settings.kinds), "ops": list(settings.ops),
                     "sizes": list(settings.sizes), "iters": settings.iters,
                     "warmup": settings.warmup, "timeout_s": settings.timeout_s,
                     "dtype": "float32",
                     "inject": None if settings.inject is None else
                     {"kind": settings.inject.kind, "rank": settings.inject.rank,
                      "delay_ms": settings.inject.delay_ms}},
        "note": ONE_RANK_NOTE if world == 1 else None,
        "results": rows,
        "summaries": kind_summaries(rows, {k: v for k, v in counts.items()
                                           if any(r["kind"] == k for r in rows)}),
        "stragglers": stragglers(rows),
        "deadlines": deadline_list,
        "failures": list(failures),
        "wrong": wrong,
        "complete": done and not deadline_list and not failures,
        "ok": done and wrong == 0 and not deadline_list and not failures,
    }


_NUM = {"type": "number"}
_NUM_OR_NULL = {"type": ["number", "null"]}
_INT = {"type": "integer", "minimum": 0}
_RANKS = {"type": "array", "items": _INT}
_RANK_MAP = {"type": "object", "additionalProperties": _NUM,
             "propertyNames": {"pattern": "^[0-9]+$"}}

REPORT_JSON_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://pypto-serving/schemas/commcheck-v1.json",
    "title": SCHEMA,
    "type": "object",
    "required": ["schema", "world_size", "platform", "backend", "settings", "results",
                 "summaries", "stragglers", "deadlines", "failures", "wrong", "ok"],
    "properties": {
        "schema": {"const": SCHEMA},
        "summary": {"type": "string"},
        "world_size": {"type": "integer", "minimum": 1},
        "layout": {"type": "object", "additionalProperties": {"type": "integer"}},
        "platform": {"enum": ["cpu", "cuda", "npu", "auto"]},  # auto: no rank reported
        "backend": {"type": "string"},
        "note": {"type": ["string", "null"]},
        "settings": {
            "type": "object",
            "required": ["groups", "ops", "sizes", "iters", "warmup", "timeout_s", "dtype"],
            "properties": {
                "groups": {"type": "array", "items": {"enum": ["tp", "pp", "dp", "ep", "world"]}},
                "ops": {"type": "array", "items": {"type": "string"}},
                "sizes": {"type": "array", "items": {"type": "integer", "minimum": 1}},
                "iters": {"type": "integer", "minimum": 1},
                "warmup": _INT,
                "timeout_s": {"type": "number", "exclusiveMinimum": 0},
                "dtype": {"const": "float32"},
                "inject": {"type": ["object", "null"]},
            },
        },
        "results": {"type": "array", "items": {
            "type": "object",
            "required": ["step", "kind", "group", "ranks", "op", "variant", "size_bytes",
                         "bytes", "count", "time_us", "algbw_gbps", "busbw_gbps",
                         "bus_factor", "iters", "wrong", "wrong_by_rank", "wrong_from",
                         "rank_time_us", "rank_lag_us", "rank_excess_gap_us", "late"],
            "properties": {
                "step": _INT, "kind": {"enum": ["tp", "pp", "dp", "ep", "world"]},
                "group": _INT, "ranks": _RANKS,
                "op": {"enum": ["all_reduce", "all_gather", "reduce_scatter", "send_recv",
                                "all_to_all", "broadcast", "barrier"]},
                "variant": {"type": "string"}, "size_bytes": _INT, "bytes": _NUM,
                "count": _INT, "time_us": {"type": "number", "minimum": 0},
                "algbw_gbps": _NUM_OR_NULL, "busbw_gbps": _NUM_OR_NULL,
                "bus_factor": _NUM_OR_NULL, "iters": {"type": "integer", "minimum": 1},
                "wrong": _INT, "bad_iters": _INT, "checked": _INT, "wrong_by_rank": _RANK_MAP,
                "wrong_from": _RANK_MAP, "rank_time_us": _RANK_MAP, "rank_lag_us": _RANK_MAP,
                "rank_excess_gap_us": _RANK_MAP, "late": _RANKS,
            },
        }},
        "summaries": {"type": "array", "items": {
            "type": "object", "required": ["kind", "groups", "group_size", "ops", "wrong"],
            "properties": {"ops": {"type": "array", "items": {
                "type": "object",
                "required": ["op", "variant", "latency_us", "peak_busbw_gbps", "wrong"]}}},
        }},
        "stragglers": {"type": "array", "items": {
            "type": "object", "required": ["kind", "group", "rank", "late_steps", "steps",
                                           "median_lag_us", "median_excess_gap_us"]}},
        "deadlines": {"type": "array", "items": {
            "type": "object", "required": ["step", "kind", "group", "ranks", "op", "variant",
                                           "size_bytes", "timeout_s", "detected_by",
                                           "missing", "waiting", "root", "chain"],
            "properties": {"missing": _RANKS, "waiting": _RANKS, "detected_by": _RANKS,
                           "root": _RANKS, "chain": {"type": "array"}}}},
        "failures": {"type": "array", "items": {
            "type": "object", "required": ["rank", "how"]}},
        "wrong": _INT,
        "complete": {"type": "boolean"},
        "ok": {"type": "boolean"},
    },
}
