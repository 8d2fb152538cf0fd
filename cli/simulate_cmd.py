"""`pypto simulate`: a layout's groups, memory, communication and step time on a hardware
shape, without a device; `--search` ranks every layout; `--execute` checks it for real."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from ..core.errors import ConfigError
from ..core.flags import CONFIG_FLAGS
from ..core.hardware import DEFAULT_HARDWARE
from .errors import fail, user_errors
from .options import ConfigSource, config_options

DEFAULT_MODEL = "mixtral-8x7b-shape"
EXECUTE_MAX_RANKS = 8

HELP = """Simulate a layout of N ranks on a hardware shape without a device: its groups (and
which cross a node boundary), memory per rank, bytes and time per group and step, prefill
latency and decode throughput. Without a layout (or with --search) every layout of N ranks is
ranked.

Examples: pypto simulate --ranks 16;  pypto simulate --ranks 16 -dp 2 -tp 8;
pypto simulate --ranks 4096 --search --top 5 --model deepseek-v3-shape;
pypto simulate --ranks 4 --hardware cpu-host --model tiny-moe -tp 2 -dp 2 --execute"""


# simulate's --model names a shipped model shape (it sizes layouts before any checkpoint
# exists), so the shared --model (model.path, a checkpoint folder) is left out here.
SIMULATE_FLAGS = tuple(f for f in CONFIG_FLAGS if f.path != "model.path")


@config_options(flags=SIMULATE_FLAGS)
def simulate(
    ranks: Annotated[int, typer.Option("--ranks", help="World size: devices to simulate.",
                                       show_default=False)],
    config: Annotated[Path | None, typer.Option("--config", help="Config file with the layout "
                                                "(its cluster is replaced by --hardware's).")
                      ] = None,
    model: Annotated[str | None, typer.Option("--model", help="Model shape (see `pypto "
                                              f"profiles`); default {DEFAULT_MODEL} unless "
                                              "a config or profile gives one.")] = None,
    hardware: Annotated[str, typer.Option("--hardware", help="Hardware profile "
                                          "(profiles/hardware).")] = DEFAULT_HARDWARE,
    search: Annotated[bool, typer.Option("--search", help="Rank every layout of N ranks.")
                      ] = False,
    top: Annotated[int, typer.Option("--top", help="Ranked layouts shown.")] = 10,
    batch: Annotated[int, typer.Option("--batch", help="Decode: sequences per replica.")
                     ] = 32,
    context: Annotated[int, typer.Option("--context", help="Decode: tokens each sequence "
                                         "attends to.")] = 2048,
    prompt_len: Annotated[int, typer.Option("--prompt-len", help="Prefill: tokens of one "
                                            "prompt.")] = 1024,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output (schema "
                                          "pypto.simulate/v1).")] = False,
    execute: Annotated[bool, typer.Option("--execute", help="Also run the layout (with "
                                          "--search: the top K) for real (CPU processes, "
                                          "gloo, the reference model at a small shape) and "
                                          "compare bytes and step time.")
                       ] = False,
    calibration: Annotated[list[Path] | None, typer.Option(
        "--calibration", help="`pypto check-comm --json` output: price communication with "
        "its measured figures (repeat it for reports of several layouts).")] = None,
    source: ConfigSource = None,
) -> None:
    from ..core.cost_model import Workload, layout_cost
    from ..core.hardware import hardware_profile
    from ..core.layout_search import RanksError
    from ..core.layout_search import search as search_layouts
    from ..core.simulate_report import simulate_document

    for name, value in (("--ranks", ranks), ("--top", top), ("--batch", batch),
                        ("--context", context), ("--prompt-len", prompt_len)):
        if value < 1:
            raise fail(f"{name} {value}: must be at least 1")
    if model is not None and source.model_profile is not None:
        raise fail("--model and --model-profile both name the model; give one of them")
    if config is not None and not config.is_file():
        raise fail(f"--config {config}: no such file")
    for path in calibration or ():
        if not path.is_file():
            raise fail(f"--calibration {path}: no such file")
    with user_errors():
        try:
            hw = hardware_profile(hardware)
        except ConfigError as e:
            raise fail(f"--hardware {hardware}: {e.issues[0].message}") from None
    work = Workload(batch=batch, context=context, prompt_len=prompt_len)
    has_layout = (config is not None or source.profile is not None
                  or any(v is not None for v in source.flags.values()))
    model_name = model or source.model_profile
    if model_name is None and config is None and source.profile is None:
        model_name = DEFAULT_MODEL
    source = ConfigSource(source.profile, model_name, source.flags)
    with user_errors():
        base = source.resolve(config)
    links, cal_doc = None, None
    if calibration:
        from ..core.calibration import CalibrationError, calibrate

        try:
            links, cal_doc = calibrate(calibration, hw)
        except CalibrationError as e:
            raise fail(f"--calibration: {e}") from None
    try:
        layout = _layout_on(base, hw, ranks) if has_layout else None
        result = (search_layouts(base, hw, work, ranks, links)
                  if search or not has_layout else None)
    except RanksError as e:
        raise fail(str(e)) from None
    except ConfigError as e:
        raise fail(_layout_problem(e)) from None
    cost = None
    if layout is not None:
        cost = layout_cost(layout, hw, work, links)
    elif result is not None and result.ranked:
        cost = result.ranked[0]
    model_doc = base.model.model_dump(mode="json")
    doc = simulate_document(ranks, hw, work, model_doc, cost, result, top, cal_doc)
    if execute:
        if ranks > EXECUTE_MAX_RANKS:
            raise fail(f"--execute runs one CPU process per rank here: use --ranks "
                       f"{EXECUTE_MAX_RANKS} or fewer")
        if cost is None:
            raise fail("--execute needs a layout: give one with flags, --config or --profile, "
                       "or --search with a valid layout")
        from ..simulate.execute import ExecuteError, execute_layouts

        configs = ([c.config for c in result.ranked[:top]] if search and result is not None
                   else [cost.config])
        try:
            doc["execute"] = execute_layouts(configs, hw, links)
        except ExecuteError as e:
            raise fail(str(e), e.code) from None
    if as_json:
        typer.echo(json.dumps(doc, indent=2))
        return
    from .console import make_console
    from .simulate_render import render

    render(make_console(), doc, has_layout)


def _layout_on(base, hw, ranks: int):
    """The given layout with the cluster --ranks makes of --hardware's nodes."""
    from ..core.layout_search import cluster_for
    from ..core.loader import parse_config

    world = base.parallel.world_size
    if world != ranks:
        from ..core.report import layout_label

        raise ConfigError([_issue(f"--ranks {ranks}, but the layout {layout_label(base)} has "
                                  f"{world} ranks; use --ranks {world} or change the layout")])
    data = base.model_dump(mode="json")
    data["cluster"] = cluster_for(ranks, hw)
    data["parallel"]["data_parallel_size_local"] = None
    return parse_config(data, f"the layout on {hw.name}")


def _issue(message: str):
    from ..core.errors import ConfigIssue

    return ConfigIssue("", None, message)


def _layout_problem(e: ConfigError) -> str:
    return "; ".join(str(i) for i in e.issues) if len(e.issues) == 1 else e.render()


def register(app: typer.Typer) -> None:
    app.command("simulate", help=HELP, no_args_is_help=True)(simulate)
