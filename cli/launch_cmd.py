"""`pypto launch`: torchrun-style per-device workers (the launcher package does the work)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..core.flags import CONFIG_FLAGS, overrides_from_flags
from .errors import fail, user_errors
from .options import ConfigSource, config_options

# The layout flags launch adds; --nnodes, --platform and --nproc-per-node are its own
# (torchrun's); the launcher folds them into the config when flags describe the layout.
PARALLEL_FLAGS = tuple(f for f in CONFIG_FLAGS if f.path.startswith("parallel."))
# ... and --model (model.path), a checkpoint folder whose config.json shapes the layout.
LAUNCH_FLAGS = PARALLEL_FLAGS + tuple(f for f in CONFIG_FLAGS if f.path == "model.path")

HELP = """Start one worker per local device running SCRIPT (or -m MODULE), supervise them, and
leave nothing behind. torchrun's flags work the same; with --config/--profile the world
comes from the config. Workers get torchrun's variables plus PYPTO_CONFIG and their
PYPTO_DP/TP/PP/EP_RANK."""

TORCHRUN = "torchrun flags"
PYPTO = "pypto flags"
SERVICE = "service flags (--service)"


@config_options(flags=LAUNCH_FLAGS, with_profile=False)
def launch(
    script: Annotated[str, typer.Argument(help="The script to run (a module with -m).",
                                          show_default=False)],
    args: Annotated[list[str] | None, typer.Argument(help="Arguments passed to the script.",
                                                     show_default=False)] = None,
    config: Annotated[Path | None, typer.Option("--config", help="Config file: world size "
                                                "and devices per node come from it.",
                                                rich_help_panel=PYPTO)] = None,
    profile: Annotated[str | None, typer.Option("--profile", help="A shipped profile (see "
                                                "`pypto profiles`).", rich_help_panel=PYPTO)
                       ] = None,
    module: Annotated[bool, typer.Option("-m", "--module", help="SCRIPT is a module name, "
                                         "run like python -m.", rich_help_panel=TORCHRUN)
                      ] = False,
    nnodes: Annotated[str | None, typer.Option("--nnodes", help="Number of nodes "
                                               "(default 1, or the config's).",
                                               rich_help_panel=TORCHRUN)] = None,
    nproc_per_node: Annotated[str | None, typer.Option(
        "--nproc-per-node", "--nproc_per_node", help="Workers on this node: a number, auto, "
        "cpu or gpu (default 1, or the config's devices_per_node).",
        rich_help_panel=TORCHRUN)] = None,
    node_rank: Annotated[int, typer.Option("--node-rank", "--node_rank", min=0,
                                           help="This node's rank.", rich_help_panel=TORCHRUN)
                         ] = 0,
    master_addr: Annotated[str | None, typer.Option(
        "--master-addr", "--master_addr", help="Host of node 0 (default 127.0.0.1).",
        rich_help_panel=TORCHRUN)] = None,
    master_port: Annotated[int | None, typer.Option(
        "--master-port", "--master_port", help="Port of node 0 (default 29500).",
        rich_help_panel=TORCHRUN)] = None,
    standalone: Annotated[bool, typer.Option("--standalone", help="One node on a free "
                                             "local port.", rich_help_panel=TORCHRUN)] = False,
    max_restarts: Annotated[int, typer.Option("--max-restarts", "--max_restarts", min=0,
                                              help="Restart the local group this many times "
                                              "after a failure (single node only, for now).",
                                              rich_help_panel=TORCHRUN)
                            ] = 0,
    rdzv_endpoint: Annotated[str | None, typer.Option(
        "--rdzv-endpoint", "--rdzv_endpoint", help="HOST[:PORT] of node 0 (port 29400 by "
        "default), instead of --master-addr/--master-port.", rich_help_panel=TORCHRUN)] = None,
    rdzv_backend: Annotated[str | None, typer.Option(
        "--rdzv-backend", "--rdzv_backend", help="Accepted for torchrun scripts: c10d or "
        "static (both meet through node 0's TCP store).", rich_help_panel=TORCHRUN)] = None,
    run_id: Annotated[str, typer.Option("--run-id", "--rdzv-id", "--rdzv_id",
                                        help="Job id (TORCHELASTIC_RUN_ID).",
                                        rich_help_panel=TORCHRUN)
                      ] = "none",
    log_dir: Annotated[Path | None, typer.Option("--log-dir", "--log_dir", help="Also write "
                                                 "LOG_DIR/rank<N>.log per rank.",
                                                 rich_help_panel=TORCHRUN)] = None,
    redirects: Annotated[str | None, typer.Option(
        "-r", "--redirects", help="Send streams to the log files only: 0 none, 1 stdout, "
        "2 stderr, 3 both; or per local rank, e.g. 0:1,1:2.", rich_help_panel=TORCHRUN)] = None,
    tee: Annotated[str | None, typer.Option(
        "-t", "--tee", help="Streams also written to log files (same syntax as --redirects).",
        rich_help_panel=TORCHRUN)] = None,
    local_ranks_filter: Annotated[str | None, typer.Option(
        "--local-ranks-filter", "--local_ranks_filter", help="Show only these local ranks "
        "on the console, e.g. 0,2.", rich_help_panel=TORCHRUN)] = None,
    platform: Annotated[str | None, typer.Option("--platform", help="cpu, cuda, npu or auto "
                                                 "(default: the config's, else detected).",
                                                 rich_help_panel=PYPTO)] = None,
    device_bind: Annotated[str, typer.Option("--device-bind", help="local-rank: device = "
                                             "LOCAL_RANK (torchrun); mask: one visible device "
                                             "per worker.", rich_help_panel=PYPTO)
                           ] = "local-rank",
    cpu_bind: Annotated[bool, typer.Option("--cpu-bind", help="Pin each local rank to its own "
                                           "share of the CPUs.", rich_help_panel=PYPTO)
                        ] = False,
    start_method: Annotated[str | None, typer.Option(
        "--start-method", help="auto (fork from a torch-preloaded zygote where safe), fork or "
        "spawn; env PYPTO_LAUNCH_START_METHOD.", rich_help_panel=PYPTO)] = None,
    grace_period: Annotated[float, typer.Option("--grace-period", help="Seconds between "
                                                "SIGTERM and SIGKILL when stopping workers.",
                                                rich_help_panel=PYPTO)] = 5.0,
    rdzv_timeout: Annotated[float, typer.Option("--rdzv-timeout", help="Seconds to wait for "
                                                "the other nodes / the master.",
                                                rich_help_panel=PYPTO)] = 60.0,
    service: Annotated[bool, typer.Option("--service", help="Host a service: each restart "
                                          "domain (a DP replica without EP) is its own group, "
                                          "restarted alone; workers call launcher.health."
                                          "report_ready; events are printed as they happen.",
                                          rich_help_panel=SERVICE)] = False,
    heartbeat_timeout: Annotated[float, typer.Option(
        "--heartbeat-timeout", help="Seconds without a heartbeat before a ready worker counts "
        "as hung.", rich_help_panel=SERVICE)] = 10.0,
    restart_backoff: Annotated[float, typer.Option(
        "--restart-backoff", help="Seconds before a group restarts; doubles for each "
        "restart in a row that never got ready (at most 30).", rich_help_panel=SERVICE)] = 0.5,
    ready_timeout: Annotated[float | None, typer.Option(
        "--ready-timeout", help="Seconds a group may take to become ready (default: no "
        "limit).", rich_help_panel=SERVICE)] = None,
    max_log_bytes: Annotated[int, typer.Option(
        "--max-log-bytes", help="Rotate a rank's --log-dir file past this size (keeps 3).",
        rich_help_panel=SERVICE)] = 64 << 20,
    source: ConfigSource = None,
) -> None:
    from ..launcher import LaunchError, LaunchSpec
    from ..launcher import launch as run_launch

    spec = LaunchSpec(
        target=script, args=list(args or []), module=module, config=config, profile=profile,
        layout_flags=overrides_from_flags(source.flags), model_profile=source.model_profile,
        flag_names={f.path: f.name for f in LAUNCH_FLAGS if source.flags.get(f.path) is not None},
        nnodes=nnodes, nproc_per_node=nproc_per_node, node_rank=node_rank,
        master_addr=master_addr, master_port=master_port, standalone=standalone,
        max_restarts=max_restarts, rdzv_endpoint=rdzv_endpoint, rdzv_backend=rdzv_backend,
        run_id=run_id, log_dir=log_dir, redirects=redirects,
        tee=tee, local_ranks_filter=local_ranks_filter, platform=platform,
        device_bind=device_bind, cpu_bind=cpu_bind, start_method=start_method,
        grace_period=grace_period, rdzv_timeout=rdzv_timeout,
    )
    with user_errors():
        try:
            if service:
                from ..launcher.service_cli import run_service

                result = run_service(spec, own_process=True,
                                     heartbeat_timeout_s=heartbeat_timeout,
                                     restart_backoff_s=restart_backoff,
                                     ready_timeout_s=ready_timeout, max_log_bytes=max_log_bytes)
            else:
                result = run_launch(spec, own_process=True)
        except LaunchError as e:
            raise fail(str(e), e.code) from None
    raise typer.Exit(result.exit_code)


def register(app: typer.Typer) -> None:
    """Add `pypto launch`; options stop at SCRIPT, everything after it goes to the script."""
    app.command(
        "launch", help=HELP, no_args_is_help=True,
        context_settings={"allow_interspersed_args": False},
    )(launch)
