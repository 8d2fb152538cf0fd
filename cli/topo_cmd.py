"""`pypto topo show`: the resolved rank and group tables, a layout map, or JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from ..core.layout import UnknownGroupError
from ..core.loader import DEFAULT_PROFILE
from ..core.report import topology_document
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
    limit: Annotated[int, typer.Option("--limit", min=1, help="Rows and groups listed before "
                                       "summarising.")] = 64,
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
    try:
        doc = topology_document(topo, rank, None if group is None else (group,), limit)
    except (UnknownGroupError, GroupUnavailableError) as e:
        raise fail(f"--group {group}: {e}") from None
    except IndexError as e:
        raise fail(f"--rank {rank}: {e}") from None
    if as_json:
        typer.echo(json.dumps(doc, indent=2))
        return
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
