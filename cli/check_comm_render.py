"""Rendering of a check-comm report (core's `pypto.commcheck/v1` document) with rich: a table
per group, a summary line per group kind, then what went wrong and who caused it."""

from __future__ import annotations

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

LATE = "late ranks (+ms)"


def human_bytes(n: float) -> str:
    n = int(n)
    for unit, size in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= size:
            return f"{n // size} {unit}" if n % size == 0 else f"{n / size:.1f} {unit}"
    return f"{n} B"


def _bw(value: float | None) -> str:
    """GB/s with three significant digits at any scale (gloo's 0.00123, NVLink's 412)."""
    if value is None:
        return "-"
    return f"{value:.1f}" if value >= 100 else f"{value:.3g}"


def group_table(rows: list[dict]) -> Table:
    """One group's rows (every op and size of one group)."""
    first = rows[0]
    ranks = ",".join(map(str, first["ranks"])) if first["op"] != "send_recv" else None
    title = f"{first['kind']}#{first['group']}"
    if ranks:
        title += f"  ranks {ranks}"
    table = Table(title=title, title_justify="left", header_style="bold")
    for name in ("op", "size", "count", "time (us)", "algbw (GB/s)", "busbw (GB/s)",
                 "#wrong", LATE):
        table.add_column(name, justify="left" if name in ("op", LATE)
                         else "right", no_wrap=True)
    previous = None
    for row in rows:
        label = row["op"] + (f" {row['variant']}" if row["variant"] else "")
        if row["op"] == "send_recv":
            label += f" ({row['ranks'][0]}->{row['ranks'][1]})"
        if previous is not None and label != previous:
            table.add_section()
        late = ", ".join(f"{r} (+{row['rank_excess_gap_us'][str(r)] / 1e3:.1f})"
                         for r in row["late"])
        wrong = Text(str(row["wrong"]), style="bold red" if row["wrong"] else "")
        table.add_row(label if label != previous else "", human_bytes(row["bytes"])
                      if row["op"] != "barrier" else "-", str(row["count"]),
                      f"{row['time_us']:.1f}", _bw(row["algbw_gbps"]), _bw(row["busbw_gbps"]),
                      wrong, late or "")
        previous = label
    return table


def group_tables(report: dict) -> list[Table]:
    by_group: dict[tuple[str, int], list[dict]] = {}
    for row in report["results"]:
        by_group.setdefault((row["kind"], row["group"]), []).append(row)
    return [group_table(rows) for rows in by_group.values()]


def summary_lines(report: dict) -> list[str]:
    """One line per group kind: bandwidth at the largest size across its groups, latency."""
    lines = []
    for s in report["summaries"]:
        parts = []
        for op in s["ops"]:
            name = op["op"] + (f"({op['variant']})" if op["variant"] else "")
            if op["busbw_gbps"] is None:
                parts.append(f"{name} {op['latency_us']:.0f} us")
                continue
            bw = op["busbw_gbps"]
            spread = "" if s["groups"] == 1 else (
                f" (groups {_bw(bw['min'])}-{_bw(bw['max'])}, slowest #{op['slowest_group']})")
            parts.append(f"{name} busbw {_bw(bw['median'])} GB/s at "
                         f"{human_bytes(op['largest_bytes'])}{spread}, "
                         f"{op['latency_us']:.0f} us at {human_bytes(op['latency_bytes'])}")
        wrong = f"{s['wrong']} wrong" if s["wrong"] else "0 wrong"
        lines.append(f"{s['kind']}: {s['groups']} group(s) of {s['group_size']}: "
                     + "; ".join(parts) + f"; {wrong}")
    return lines


def findings(report: dict) -> list[Text]:
    """Wrong results (and the ranks whose data was wrong), stragglers, missed deadlines,
    dead workers: each naming group, op, size and ranks."""
    out: list[Text] = []
    for row in report["results"]:
        if not row["wrong"]:
            continue
        seen = ", ".join(f"rank {r}: {n}" for r, n in row["wrong_by_rank"].items() if n)
        where = f"{row['kind']}#{row['group']} {row['op']}" + (
            f"({row['variant']})" if row["variant"] else "") + f" {human_bytes(row['bytes'])}"
        line = f"WRONG  {where}: {row['wrong']} wrong element(s) ({seen})"
        if row["wrong_from"]:
            line += "; the wrong parts came from rank(s) " + ", ".join(row["wrong_from"])
        out.append(Text(line, style="bold red"))
    culprits = culprit_ranks(report)
    if culprits:
        out.append(Text("CORRUPT DATA from rank(s) " + ", ".join(map(str, culprits)),
                        style="bold red"))
    for s in report["stragglers"]:
        out.append(Text(f"STRAGGLER  rank {s['rank']} in {s['kind']}#{s['group']}: held its "
                        f"group up in {s['late_steps']} of {s['steps']} steps, "
                        f"{s['median_excess_gap_us'] / 1e3:.1f} ms longer between calls than "
                        f"its peers (median; it entered "
                        f"{s['median_lag_us'] / 1e3:.1f} ms after the first)", style="yellow"))
    for d in report["deadlines"]:
        missing = ", ".join(map(str, d["missing"]))
        line = (f"DEADLINE  {d['kind']}#{d['group']} {d['op']}"
                + (f"({d['variant']})" if d["variant"] else "")
                + f" {human_bytes(d['size_bytes'])}: no result within {d['timeout_s']:g} s; ")
        line += (f"rank(s) {missing} never arrived" if missing
                 else "every rank arrived but the op never finished")
        if d["waiting"]:
            line += f" (rank(s) {', '.join(map(str, d['waiting']))} waited for them)"
        out.append(Text(line, style="bold red"))
        for hop in d["chain"]:
            out.append(Text("  " + _hop(hop)))
        if d["root"]:
            out.append(Text(f"  at the root of the wait: rank(s) "
                            f"{', '.join(map(str, d['root']))}", style="bold red"))
    for f in report["failures"]:
        who = f"rank {f['rank']}" if f["rank"] >= 0 else "the launch:"
        out.append(Text(f"FAILED  {who} {f['how']}" + (f": {f['error']}" if f.get("error")
                                                         else ""), style="bold red"))
    return out


def _hop(hop: dict) -> str:
    """Where one missing rank was when the deadline passed."""
    r = hop["rank"]
    if hop["step"] is None:
        return f"rank {r} never reached its first op"
    where = (f"{hop['kind']}#{hop['group']} {hop['op']}"
             + (f"({hop['variant']})" if hop["variant"] else "")
             + f" {human_bytes(hop['size_bytes'])}")
    if hop.get("between_steps"):
        return f"rank {r} finished {where} and went no further"
    if hop.get("missing"):
        return f"rank {r} is in {where}, waiting for rank(s) {', '.join(map(str, hop['missing']))}"
    return f"rank {r} is in {where}, where every rank arrived: the op itself is stuck"


def culprit_ranks(report: dict) -> list[int]:
    """Ranks whose data arrived wrong at a peer (from the parts of gathers, all_to_alls,
    broadcasts and sends)."""
    return sorted({int(r) for row in report["results"] for r in row["wrong_from"]})


def verdict(report: dict) -> Text:
    checks = sum(row["checked"] * len(row["ranks"]) for row in report["results"]
                 if row["op"] != "barrier")
    groups = len({(row["kind"], row["group"]) for row in report["results"]})
    slow = sorted({s["rank"] for s in report["stragglers"]})
    slow_note = f"; straggler rank(s) {', '.join(map(str, slow))}" if slow else ""
    if report["ok"]:
        return Text(f"check-comm: OK: {len(report['results'])} op/size steps on {groups} "
                    f"group(s), {checks} results checked, 0 wrong{slow_note}",
                    style="bold yellow" if slow else "bold green")
    reasons = []
    if report["wrong"]:
        reasons.append(f"{report['wrong']} wrong element(s)")
    if report["deadlines"]:
        reasons.append(f"{len(report['deadlines'])} missed deadline(s)")
    if report["failures"]:
        reasons.append(f"{len(report['failures'])} worker failure(s)")
    if not reasons:
        reasons.append("the check did not complete")
    roots = sorted({r for d in report["deadlines"] for r in d["root"]})
    if roots:
        reasons.append(f"waits rooted at rank(s) {', '.join(map(str, roots))}")
    culprits = culprit_ranks(report)
    if culprits:
        reasons.append(f"corrupt data from rank(s) {', '.join(map(str, culprits))}")
    return Text("check-comm: FAILED: " + ", ".join(reasons) + slow_note, style="bold red")


def render(report: dict) -> RenderableType:
    parts: list[RenderableType] = [Text(report.get("summary", ""))]
    parts += group_tables(report)
    parts += [Text(line) for line in summary_lines(report)]
    if report.get("note"):
        parts.append(Text(report["note"], style="cyan"))
    parts += findings(report)
    parts.append(verdict(report))
    return Group(*parts)
