"""`pypto check-comm`: every serving group's collectives checked for right answers, timed for
bandwidth as nccl-tests defines it, with stragglers, missing ranks and dead workers named."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from ..core.comm_check import DEFAULT_SIZES, OPS, CheckUsageError, check_settings
from ..core.loader import DEFAULT_PROFILE, load_config
from ..core.topology import resolve_topology
from .errors import fail, user_errors
from .options import ConfigSource, config_options

HELP = f"""Check the collectives of every resolved serving group: all_reduce, all_gather and
reduce_scatter on TP and DP groups, send/recv between neighbouring PP stages, all_to_all
(even and uneven splits) on EP groups, broadcast and barrier on the world. Every rank checks
its results; time, algbw and busbw are nccl-tests'. Launches one worker per rank on this
node (default profile {DEFAULT_PROFILE}), or runs as one rank of an existing launch
(`pypto launch ... -m pypto_serving.cli.entry check-comm`; rank 0 reports). Exit 0 all
right, 1 wrong results, a missed deadline or a dead worker, 2 bad options.

Example: pypto check-comm --profile cpu-demo --sizes 1KB:1MB --json report.json"""


@config_options
def check_comm(
    config: Annotated[Path | None, typer.Option("--config", help="Config file (the layout "
                                                "to check).", show_default=False)] = None,
    groups: Annotated[str | None, typer.Option("--groups", help="Group kinds to check, "
                                               "comma-separated: tp, pp, dp, ep, world "
                                               "(default: every kind the layout has).",
                                               show_default=False)] = None,
    ops: Annotated[str | None, typer.Option("--ops", help="Ops to run, comma-separated: "
                                            f"{', '.join(OPS)} (default: all).",
                                            show_default=False)] = None,
    sizes: Annotated[str, typer.Option("--sizes", help="Message sizes: LO:HI doubling "
                                       "(nccl-tests' -b/-e), LO:HI:xF, or a list 1KB,1MB.")
                     ] = DEFAULT_SIZES,
    iters: Annotated[int, typer.Option("--iters", help="Timed calls per op and size (the "
                                       "time is their median).")] = 20,
    warmup: Annotated[int, typer.Option("--warmup", help="Untimed calls before them.")] = 5,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds one op call may take "
                                           "before the ranks that never arrived are named "
                                           "and the check stops.")] = 30.0,
    json_file: Annotated[Path | None, typer.Option("--json", help="Also write the whole "
                                                   "report (schema pypto.commcheck/v1) to "
                                                   "this file; - for stdout.",
                                                   show_default=False)] = None,
    inject: Annotated[str | None, typer.Option(
        "--inject", help="A fault on purpose, to see it found: slow:RANK[:MS], hang:RANK, "
        "corrupt:RANK or crash:RANK.", show_default=False)] = None,
    source: ConfigSource = None,
) -> None:
    inside = inside_launch()
    if inside and (config is not None or source.profile or source.model_profile
                   or any(v is not None for v in source.flags.values())):
        raise fail("inside a launch the layout is the launch's (PYPTO_CONFIG); drop "
                   "--config, --profile and the layout flags")
    with user_errors():
        cfg = (load_config(os.environ["PYPTO_CONFIG"]) if inside
               else source.resolve(config, default_profile=DEFAULT_PROFILE))
    topology = resolve_topology(cfg)
    try:
        settings = check_settings(topology, groups, ops, sizes, iters, warmup, timeout, inject)
    except CheckUsageError as e:
        raise fail(str(e)) from None
    if json_file is not None and str(json_file) != "-" and not json_file.parent.is_dir():
        raise fail(f"--json {json_file}: folder {json_file.parent} does not exist")
    if inside:
        from ..executor.comm_check_job import run_inside_launch

        report = run_inside_launch(cfg, settings)
        if report is None:  # not rank 0: rank 0 reports for every rank
            raise typer.Exit(0)
        _show(report, json_file)
    if cfg.cluster.nnodes > 1:
        raise fail(f"cluster.nnodes={cfg.cluster.nnodes}: check-comm launches one node; on "
                   "several, run it inside a launch on each node: `pypto launch --nnodes N "
                   "... -m pypto_serving.cli.entry check-comm`")
    from ..executor.comm_check_job import run_job
    from ..launcher import LaunchError

    err_console = make_console_stderr()
    progress = None
    if err_console.is_terminal:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

        progress = Progress("check-comm", BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), console=err_console, transient=True)
    settings = dataclasses.replace(settings, progress=progress is not None)
    task = progress.add_task("steps", total=None) if progress else None

    def on_progress(done: int, total: int) -> None:
        progress.update(task, completed=done, total=total)

    with user_errors():
        try:
            if progress is not None:
                with progress:
                    job = run_job(cfg, settings, on_progress)
            else:
                job = run_job(cfg, settings)
        except LaunchError as e:
            raise fail(str(e), e.code) from None
    report = job.report
    if job.signal is not None:
        sys.stderr.write(f"check-comm: stopped by {job.signal}\n")
        raise typer.Exit(job.exit_code)
    if report["failures"]:  # the launcher's own report says who died and how
        sys.stderr.write("\n".join(job.output).strip() + "\n")
    _show(report, json_file)


def _show(report: dict, json_file: Path | None) -> None:
    """Write --json, draw the report, and exit 0 only if all was right."""
    from . import check_comm_render
    from .console import make_console

    if json_file is not None:
        text = json.dumps(report, indent=2)
        if str(json_file) == "-":
            typer.echo(text)
        else:
            json_file.write_text(text + "\n")
    if str(json_file) != "-":
        make_console().print(check_comm_render.render(report))
    raise typer.Exit(0 if report["ok"] else 1)


def inside_launch() -> bool:
    """This process is a rank of a launch (`pypto launch` or torchrun with PYPTO_CONFIG)."""
    return "RANK" in os.environ and bool(os.environ.get("PYPTO_CONFIG"))


def make_console_stderr():
    from rich.console import Console

    return Console(stderr=True)


def register(app: typer.Typer) -> None:
    app.command("check-comm", help=HELP)(check_comm)
