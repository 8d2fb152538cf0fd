"""Rich rendering of a topology document: the rank table, the group table and the layout map."""

from __future__ import annotations

from typing import Any

from rich import box
from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from ..core.topology import Topology

DP_COLORS = ("cyan", "magenta", "green", "yellow", "blue", "red", "bright_cyan", "bright_magenta")


def ids(values: list[int], most: int = 6) -> str:
    """Compact id list: '0-3' for a run, '0,4,8' otherwise, elided past `most`."""
    if not values:
        return "-"
    if values == list(range(values[0], values[-1] + 1)) and len(values) > 2:
        return f"{values[0]}-{values[-1]}"
    shown = ",".join(str(v) for v in values[:most])
    return shown + (f",… ({len(values)})" if len(values) > most else "")


def span(pair: list[int]) -> str:
    start, stop = pair
    return "-" if stop <= start else (str(start) if stop - start == 1 else f"{start}-{stop - 1}")


def aligned_table(title: str, headers: tuple[str, ...], rows: list[tuple[str, ...]],
                  right: tuple[str, ...] = (), caption: str | None = None) -> Text:
    """Columns padded to width, as one styled Text.

    rich.Table measures and renders every cell separately (about 2 ms per 13-column row
    here), which dominated `topo show`; one Text renders in well under a millisecond.
    """
    widths = [max([len(h)] + [len(row[i]) for row in rows]) for i, h in enumerate(headers)]

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(c.rjust(w) if h in right else c.ljust(w)
                         for c, w, h in zip(cells, widths, headers, strict=True)).rstrip()

    text = Text(f"{title}\n", style="bold")
    text.append(line(headers) + "\n", style="bold")
    text.append("  ".join("-" * w for w in widths) + "\n", style="dim")
    for row in rows:
        text.append(line(row) + "\n")
    if caption:
        text.append(caption + "\n", style="dim italic")
    return text


def rank_table(doc: dict[str, Any]) -> Text:
    headers = ("rank", "node", "local", "device", "dp", "pp", "tp", "ep", "layers", "heads",
               "kv heads", "experts", "vocab")
    rows = []
    for r in doc["ranks"]:
        kv = r["kv_cache"]
        kv_text = span(kv["kv_heads"]) + (f" (x{kv['replicas']})" if kv["replicas"] > 1 else "")
        ep = "-" if r["ep"] is None else str(r["ep"])
        rows.append((str(r["rank"]), str(r["node"]), str(r["local_rank"]), r["device"],
                     str(r["dp"]), str(r["pp"]), str(r["tp"]), ep, span(r["layers"]),
                     span(r["attention_heads"]), kv_text, _experts(r), span(r["vocab"])))
    caption = None
    if doc["ranks_truncated"]:
        caption = (f"first {len(doc['ranks'])} of {doc['world_size']} ranks; "
                   "use --rank R for one rank, --limit N for more")
    return aligned_table("Ranks", headers, rows, right=("rank", "node", "local"),
                         caption=caption)


def _experts(row: dict[str, Any]) -> str:
    """A rank's experts; a truncated list shows its first ids and the count it holds."""
    if not row.get("experts_truncated"):
        return ids(row["experts"])
    return ",".join(str(e) for e in row["experts"][:3]) + f",… ({row['num_experts_held']})"


def _members(group: dict[str, Any], most: int = 6) -> str:
    """A group's ranks; a truncated list shows its first ids and the group's size."""
    if not group["ranks_truncated"]:
        return ids(group["ranks"], most)
    return ",".join(str(r) for r in group["ranks"][:3]) + f",… ({group['size']})"


def group_table(doc: dict[str, Any]) -> Text:
    rows = []
    for kind, info in doc["groups"].items():
        shown = info["groups"][:4]
        members = "  ".join(f"[{_members(g)}]" for g in shown)
        if len(info["groups"]) == 1 and "rank_in_group" in info["groups"][0]:
            g = info["groups"][0]
            members = (f"#{g['index']}: [{_members(g, most=16)}], "
                       f"rank in group {g['rank_in_group']}")
        elif info["count"] > len(shown):
            members += f"  … {info['count'] - len(shown)} more"
        rows.append((kind, str(info["count"]), str(info["size"]), members))
    return aligned_table("Groups", ("kind", "count", "size", "members"), rows,
                         right=("count", "size"))


def layout_map(topo: Topology, width: int = 100, max_nodes: int = 4,
               max_cells: int = 32) -> RenderableType:
    """One panel per node, one cell per device; TP groups framed, coloured by DP replica.

    Frames (and the cells of one wide frame) wrap into rows that fit `width` columns.
    """
    c = topo.config.cluster
    nodes = c.nnodes if c.nnodes <= max_nodes else 1
    rows: list[RenderableType] = []
    for node in range(nodes):
        first = node * c.devices_per_node
        last = min(first + c.devices_per_node, first + max_cells)
        frames: list[tuple[int, Panel]] = []
        rank = first
        while rank < last:
            info = topo.rank_info(rank)
            tp_group = topo.group("tp", rank)
            members = [r for r in tp_group.ranks if first <= r < last and r >= rank]
            frames.append(_tp_frame(topo, info.dp, info.pp, tp_group.index, members, width - 4))
            rank = members[-1] + 1
        grid = Table.grid(padding=(0, 1))
        for line in _fill(frames, width - 4):
            grid.add_row(*line)
        more = c.devices_per_node - (last - first)
        title = f"node {node}" + (f"  (+{more} devices not drawn)" if more > 0 else "")
        rows.append(Panel(grid, title=title, title_align="left", box=box.SQUARE, expand=False))
    if nodes < c.nnodes:
        rows.append(Text(f"… nodes 1-{c.nnodes - 1} repeat this pattern with ranks "
                         f"{c.devices_per_node}-{topo.world_size - 1} "
                         "(use --rank R or --json for any of them)", style="dim"))
    rows.append(_legend(topo))
    return Group(*rows)


def _fill(items: list[tuple[int, Panel]], width: int) -> list[list[Panel]]:
    """Greedy line filling of (width, frame) pairs, one space between frames."""
    lines: list[list[Panel]] = [[]]
    used = 0
    for w, item in items:
        if lines[-1] and used + 1 + w > width:
            lines.append([])
            used = 0
        used += (1 if lines[-1] else 0) + w
        lines[-1].append(item)
    return lines


def _tp_frame(topo: Topology, dp: int, pp: int, tp_index: int, ranks: list[int],
              width: int) -> tuple[int, Panel]:
    """A TP group's frame and its width; its cells wrap to rows when wider than `width`."""
    color = DP_COLORS[dp % len(DP_COLORS)]
    labels = []
    for r in ranks:
        info = topo.rank_info(r)
        lines = [f"r{r}", f"tp{info.tp}"]
        if info.ep is not None:
            lines.append(f"E{ids(list(info.experts), most=3)}")
        labels.append(lines)
    cell = max(len(line) for lines in labels for line in lines) + 1
    per_row = max(1, min(len(labels), (width - 4) // cell))
    cells = Table.grid(padding=(0, 1))
    for start in range(0, len(labels), per_row):
        row = [Text("\n".join(lines), style=f"bold {color}", justify="center")
               for lines in labels[start:start + per_row]]
        cells.add_row(*row, *[""] * (per_row - len(row)))
    stage = f" s{pp}" if topo.layout.pp > 1 else ""
    frame = Panel(cells, title=f"dp{dp}{stage}", subtitle=f"tp#{tp_index}", border_style=color,
                  box=box.ROUNDED, expand=False)
    return per_row * cell + 3, frame


def _legend(topo: Topology) -> Table:
    legend = Table.grid(padding=(0, 2))
    dp = topo.layout.dp
    swatches = Text()
    for d in range(min(dp, len(DP_COLORS))):
        swatches.append(f"■ dp{d} ", style=DP_COLORS[d % len(DP_COLORS)])
    if dp > len(DP_COLORS):
        swatches.append(f"(colours repeat every {len(DP_COLORS)} replicas)")
    legend.add_row("colour", swatches)
    legend.add_row("frame", "one TP group (dpD = DP replica, sS = PP stage, tp#N = group index)")
    if topo.layout.pp > 1:
        stages = "  ".join(f"s{i}: layers {r.start}-{r.stop - 1}"
                           for i, r in enumerate(topo.stage_layers[:8]))
        legend.add_row("stages", stages)
    if topo.expert_placement is not None:
        p = topo.expert_placement
        legend.add_row("experts", f"E = experts held; EP group = every rank of one stage "
                       f"({p.ep_size} ranks, {p.num_experts} experts, {p.strategy})")
    return legend
