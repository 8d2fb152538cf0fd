"""Tables of `pypto simulate`, drawn from its document (schema pypto.simulate/v1)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

GIB = 1 << 30
DROPPED_SHOWN = 20


def _bytes(n: float) -> str:
    for unit, size in (("GiB", GIB), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{int(n)} B"


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f}"


def header(doc: dict[str, Any]) -> str:
    hw, m, w = doc["hardware"], doc["model"], doc["workload"]
    kind = f"MoE {m['num_experts']} experts top-{m['experts_per_token']}" if m["num_experts"] \
        else "dense"
    cal = f"; links calibrated from {doc['calibration']['file']}" if doc["calibration"] else ""
    return (f"{doc['ranks']} ranks on {hw['nnodes']} node(s) x {hw['devices_per_node']} "
            f"({hw['name']}); model {m['name']} ({m['num_layers']} layers, {kind}, "
            f"{m['dtype']}); decode: {w['batch']} seqs per replica at {w['context']} tokens of "
            f"context; prefill: one {w['prompt_len']}-token prompt{cal}")


def group_table(entry: dict[str, Any]) -> Table:
    t = Table(title=f"Groups of {entry['label']}")
    for col in ("kind", "groups", "size", "crossing a node boundary", "link"):
        t.add_column(col)
    for g in entry["groups"]:
        crossing = ("none" if g["crossing_nodes"] == 0 else
                    "all" if g["crossing_nodes"] == g["count"] else
                    f"{g['crossing_nodes']} of {g['count']}")
        t.add_row(g["kind"], f"{g['count']:,}", f"{g['size']:,}", crossing,
                  g["link"].replace("_", "-"))
    return t


def memory_table(entry: dict[str, Any]) -> Table:
    m = entry["memory"]
    t = Table(title="Memory per rank (the most loaded stage)")
    for col in ("weights", "KV per token", "budget", "KV capacity (tokens)",
                "needed (batch x context)", "headroom"):
        t.add_column(col, justify="right")
    t.add_row(_bytes(m["weight_bytes"]), _bytes(m["kv_bytes_per_token"]),
              _bytes(m["budget_bytes"]), f"{m['kv_capacity_tokens']:,}",
              f"{m['needed_tokens']:,}",
              f"{_bytes(m['headroom_bytes'])} ({m['headroom_fraction']:.0%})"
              + ("" if m["fits"] else " DOES NOT FIT"))
    return t


def comm_table(entry: dict[str, Any]) -> Table:
    t = Table(title="Communication per step (one group, all its members; time on the step's "
                    "path)")
    for col in ("phase", "group", "link", "ops (calls: bytes)", "bytes", "time ms"):
        t.add_column(col, justify="right" if col in ("bytes", "time ms") else "left")
    for phase in ("prefill", "decode"):
        step = entry[phase]
        if not step["groups"]:
            t.add_row(phase, "-", "-", "no communication", "0", "0")
        for g in step["groups"]:
            ops = ", ".join(f"{op} {v['calls']}: {_bytes(v['bytes'])}"
                            for op, v in g["ops"].items())
            t.add_row(phase, g["kind"], g["link"].replace("_", "-"), ops, _bytes(g["bytes"]),
                      _ms(g["seconds"]))
    return t


def step_lines(entry: dict[str, Any]) -> str:
    p, d = entry["prefill"], entry["decode"]
    return (f"prefill latency {_ms(p['seconds'])} ms (compute {_ms(p['compute_seconds'])}, "
            f"comm {_ms(p['comm_seconds'])}); decode step {_ms(d['seconds'])} ms (compute "
            f"{_ms(d['compute_seconds'])}, comm {_ms(d['comm_seconds'])}): "
            f"{entry['decode_tokens_per_s']:,.0f} tokens/s")


def search_table(search: dict[str, Any]) -> Table:
    t = Table(title=f"Layouts ranked ({search['valid']} valid of {search['considered']}): "
                    "decode throughput, then prefill latency, then memory headroom")
    for col in ("#", "layout", "decode tok/s", "decode step ms", "prefill ms", "headroom",
                "groups crossing nodes"):
        t.add_column(col, justify="left" if col in ("layout", "groups crossing nodes")
                     else "right")
    for e in search["ranked"]:
        crossing = ", ".join(g["kind"] for g in e["groups"]
                             if g["crossing_nodes"] and g["kind"] != "world") or "none"
        t.add_row(str(e["rank"]), e["label"], f"{e['decode_tokens_per_s']:,.0f}",
                  _ms(e["decode"]["seconds"]), _ms(e["prefill"]["seconds"]),
                  f"{e['memory']['headroom_fraction']:.0%}", crossing)
    return t


def dropped_lines(search: dict[str, Any]) -> list[str]:
    dropped = search["dropped"]
    if not dropped:
        return []
    lines = [f"dropped {len(dropped)} layout(s):"]
    for d in dropped[:DROPPED_SHOWN]:
        lines.append(f"  - {d['label']}: " + "; ".join(d["reasons"]))
    if len(dropped) > DROPPED_SHOWN:
        lines.append(f"  ... and {len(dropped) - DROPPED_SHOWN} more (--json lists every one)")
    return lines


def execute_table(execute: dict[str, Any]) -> Table:
    t = Table(title="Bytes per group, predicted (core) vs counted (a real run: CPU, gloo); "
                    f"{execute['batch']} seqs per replica, {execute['prompt_len']}-token "
                    f"prompts, {execute['decode_steps']} decode steps")
    for col in ("layout", "phase", "group", "groups x steps", "predicted", "counted", "equal"):
        t.add_column(col, justify="right" if col in ("predicted", "counted") else "left")
    for lay in execute["layouts"]:
        sums: dict[tuple[str, str], list] = {}
        for g in lay["groups"]:
            row = sums.setdefault((g["step"].split()[0], g["kind"]), [0, 0, 0, True])
            row[0] += 1
            row[1] += g["predicted"]
            row[2] += g["counted"]
            row[3] = row[3] and g["equal"]
        for (phase, kind), (n, predicted, counted, equal) in sums.items():
            t.add_row(lay["label"], phase, kind, str(n), f"{predicted:,}", f"{counted:,}",
                      "yes" if equal else "NO")
    return t


def timing_table(execute: dict[str, Any]) -> Table:
    rho = execute.get("rank_correlation")
    extra = f"; rank correlation {rho:+.2f}" if rho is not None else ""
    t = Table(title=f"Decode step time on {execute['hardware']}: predicted vs measured "
                    f"(median){extra}")
    for col in ("layout", "predicted ms", "measured ms", "error"):
        t.add_column(col, justify="left" if col == "layout" else "right")
    for lay in execute["layouts"]:
        err = lay["predicted_decode_s"] / lay["measured_decode_s"] - 1
        t.add_row(lay["label"], _ms(lay["predicted_decode_s"]), _ms(lay["measured_decode_s"]),
                  f"{err:+.0%}")
    return t


def render(console: Console, doc: dict[str, Any], has_layout: bool) -> None:
    console.print(header(doc))
    search = doc["search"]
    if search is not None:
        if not has_layout:
            console.print("no layout given: every layout of these ranks, ranked "
                          "(give flags, --config or --profile to simulate one)")
        console.print(search_table(search))
        for line in dropped_lines(search):
            console.print(line, markup=False, highlight=False)
    entry = doc["layout"]
    if entry is None:
        if search is not None and not search["valid"]:
            console.print("no valid layout: see the reasons above")
        return
    if not has_layout:
        console.print(f"the best layout, {entry['label']}, in detail:")
    console.print(group_table(entry))
    console.print(memory_table(entry))
    console.print(comm_table(entry))
    console.print(step_lines(entry), markup=False, highlight=False)
    if doc["execute"] is not None:
        console.print(execute_table(doc["execute"]))
        console.print(timing_table(doc["execute"]))
