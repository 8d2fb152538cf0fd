"""`pypto topo show`: the resolved rank and group tables, a layout map, or JSON."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from ..core.layout import UnknownGroupError
from ..core.loader import DEFAULT_PROFILE
from ..core.report import MAX_LIMIT, LimitError, iter_topology_json, topology_document
from ..core.topology import GroupUnavailableError, resolve_topology
from .errors import fail, user_errors
from .options import ConfigSource, config_options

app = typer.Typer(
    help="Inspect the resolved topology of a layout.\n\n"
         "Example: pypto topo show -dp 2 -tp 4 --model-profile small-moe --map",
    no_args_is_help=True)


@app.command("show")
@config_options
def show(
    file: Annotated[Path | None, typer.Argument(help="Config file; without one, --profile or "
                                                f"flags alone (default profile {DEFAULT_PROFILE}).")
                    ] = None,
    rank: Annotated[int | None, typer.Option("--rank", help="Zoom in on one rank: its row "
                                             "and every group it belongs to.")] = None,
    group: Annotated[str | None, typer.Option("--group", help="Only groups of this kind: "
                                              "tp, pp, dp, ep or world.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output "
                                          "(schema pypto.topology/v1).")] = False,
    draw_map: Annotated[bool, typer.Option("--map", help="Draw the layout: nodes, devices, TP "
                                           "groups, DP colours, stages and experts.")] = False,
    svg: Annotated[Path | None, typer.Option("--svg", help="Also save the map as an SVG file.")
                   ] = None,
    limit: Annotated[int, typer.Option("--limit", help="Rows, groups, members and experts "
                                       f"listed before summarising (1..{MAX_LIMIT}).")] = 64,
    source: ConfigSource = None,
) -> None:
    """Print every rank's coordinates, layers, experts and KV shard, and the TP/PP/DP/EP groups.

    Examples: pypto topo show --profile cpu-demo;  pypto topo show -dp 2 -tp 4
    --model-profile small-moe --map;  pypto topo show cfg.yaml --rank 5 --json
    """
    if as_json and (draw_map or svg is not None):
        raise fail("--json cannot be combined with --map or --svg; use one of them")
    if (draw_map or svg is not None) and (rank is not None or group is not None):
        raise fail("--map/--svg draw the whole layout; --rank and --group select rows of the "
                   "tables or --json, so use one or the other")
    if svg is not None and not svg.parent.is_dir():
        raise fail(f"--svg {svg}: folder {svg.parent} does not exist")
    with user_errors():
        cfg = source.resolve(file, default_profile=DEFAULT_PROFILE)
    topo = resolve_topology(cfg)
    kinds = None if group is None else (group,)
    try:
        if as_json:  # streamed, entry by entry: memory stays flat whatever the limit
            for piece in iter_topology_json(topo, rank, kinds, limit):
                sys.stdout.write(piece)
            sys.stdout.write("\n")
            return
        # The tables draw 4 groups per kind and a few ids per cell.
        doc = topology_document(topo, rank, kinds, limit, groups_limit=4,
                                items_limit=min(limit, 64))
    except LimitError as e:
        raise fail(f"--limit {e}") from None
    except (UnknownGroupError, GroupUnavailableError) as e:
        raise fail(f"--group {group}: {e}") from None
    except IndexError as e:
        raise fail(f"--rank {rank}: {e}") from None
    from . import topo_render
    from .console import make_console

    console = make_console(record=svg is not None)
    console.print(doc["summary"])
    if draw_map or svg is not None:
        console.print(topo_render.layout_map(topo, console.width))
    else:
        console.print(topo_render.rank_table(doc))
        console.print(topo_render.group_table(doc))
    if svg is not None:
        try:
            console.save_svg(str(svg), title=f"pypto topology: {doc['summary']}")
        except OSError as e:
            raise fail(f"cannot write {svg}: {e.strerror}") from None
