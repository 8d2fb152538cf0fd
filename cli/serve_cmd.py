"""`pypto serve`: DP replicas behind an OpenAI-compatible router (router/serve.py does it)."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer

from ..core.config import ServingConfig
from .console import make_console
from .errors import fail, user_errors
from .options import ConfigSource, config_options

DEFAULT_PROFILE = "cpu-demo"
POLICY_CHOICES = ("least_loaded", "round_robin", "power_of_two", "prefix_aware", "session")

HELP = """Serve the model: start the DP replicas (each a TP/PP(/EP) group with its own engine)
through the launcher, and an OpenAI-compatible router in front of them (/v1/completions,
/v1/chat/completions, /v1/models, /health, /metrics). Ctrl-C drains in-flight requests, then
stops everything. With no config it serves the cpu-demo profile."""

SERVE = "serve flags"
MULTI = "more than one node (torchrun's names)"


@config_options
def serve(
    config: Annotated[Path | None, typer.Option("--config", help="Config file (YAML/JSON/TOML)."
                                                )] = None,
    host: Annotated[str | None, typer.Option("--host", help="Address to listen on (default "
                                             "serve.host: 127.0.0.1); on a node other than 0, "
                                             "the address its replica leaders listen on.",
                                             rich_help_panel=SERVE)] = None,
    port: Annotated[int | None, typer.Option("--port", min=0, max=65535, help="Port (default "
                                             "serve.port: 8000; 0 picks a free one).",
                                             rich_help_panel=SERVE)] = None,
    policy: Annotated[str | None, typer.Option(
        "--policy", help=f"Routing policy (default serve.policy), one of: "
        f"{', '.join(POLICY_CHOICES)}.", rich_help_panel=SERVE)] = None,
    api_key: Annotated[str | None, typer.Option("--api-key", envvar="PYPTO_API_KEY",
                                                help="Require 'Authorization: Bearer KEY' on "
                                                "every route but /health.",
                                                rich_help_panel=SERVE)] = None,
    max_restarts: Annotated[int, typer.Option("--max-restarts", min=0, help="Restart a failed "
                                              "replica (its restart domain) this many times.",
                                              rich_help_panel=SERVE)] = 3,
    log_dir: Annotated[Path | None, typer.Option("--log-dir", help="Also write each rank's "
                                                 "log under LOG_DIR.", rich_help_panel=SERVE)
                       ] = None,
    node_rank: Annotated[int, typer.Option("--node-rank", min=0, help="This node's rank "
                                           "(with --nnodes > 1): node 0 runs the router, the "
                                           "others only their replicas, which register with "
                                           "it.", rich_help_panel=MULTI)] = 0,
    master_addr: Annotated[str | None, typer.Option("--master-addr", help="Host of node 0 "
                                                    "(its launcher's rendezvous and its "
                                                    "router).", rich_help_panel=MULTI)
                           ] = None,
    master_port: Annotated[int | None, typer.Option("--master-port", min=1, max=65535,
                                                    help="Rendezvous port on node 0 (default "
                                                    "29500).", rich_help_panel=MULTI)] = None,
    source: ConfigSource = None,
) -> None:
    from ..router.serve import ServeOptions
    from ..router.serve import serve as run_serve

    if policy is not None and policy not in POLICY_CHOICES:
        raise fail(f"--policy {policy!r}: choose one of {', '.join(POLICY_CHOICES)}")
    with user_errors():
        cfg = source.resolve(config, default_profile=DEFAULT_PROFILE)
        cfg = with_serve_overrides(cfg, host=host, port=port, policy=policy)
    console = make_console()
    err = make_console()
    err.stderr = True
    options = ServeOptions(api_key=api_key, max_restarts=max_restarts,
                           log_dir=str(log_dir) if log_dir else None, node_rank=node_rank,
                           master_addr=master_addr, master_port=master_port,
                           engine_host=host if node_rank and host else "127.0.0.1")
    from ..launcher import LaunchError

    say = lambda m: err.print(f"pypto serve: {m}", markup=False, highlight=False)  # noqa: E731
    on_event = lambda e: err.print(f"pypto serve: {e.describe()}",  # noqa: E731
                                   markup=False, highlight=False)
    if node_rank > 0:
        from ..router.serve import serve_remote_node

        console.print(f"pypto serve: node {node_rank} of {cfg.cluster.nnodes}: its replicas "
                      f"register with the router at {options.router_url}:{cfg.serve.port}",
                      markup=False, highlight=False)
        try:
            code = serve_remote_node(cfg, options, on_event=on_event, say=say)
        except LaunchError as e:
            raise fail(str(e), e.code) from None
        raise typer.Exit(code)
    try:
        code = run_serve(cfg, options, on_listening=lambda r: show_start(console, cfg, r,
                                                                           api_key),
                         on_event=on_event, say=say)
    except LaunchError as e:
        raise fail(str(e), e.code) from None
    except OSError as e:  # the port is taken, or the host is not ours
        raise fail(f"cannot listen on {cfg.serve.host}:{cfg.serve.port}: {e.strerror or e}; "
                   "pick another --port (0: a free one) or --host") from None
    raise typer.Exit(code)


def with_serve_overrides(cfg: ServingConfig, **values: object) -> ServingConfig:
    """`cfg` with the serve flags that were given (checked by the schema)."""
    given = {k: v for k, v in values.items() if v is not None}
    if not given:
        return cfg
    data = cfg.model_dump()
    data["serve"].update(given)
    return ServingConfig.model_validate(data)


def show_start(console, cfg: ServingConfig, router, api_key: str | None) -> None:
    """The resolved layout, the URL and a curl line to try."""
    from rich.table import Table

    p, c = cfg.parallel, cfg.cluster
    per = p.tensor_parallel_size * p.pipeline_parallel_size
    world = "one world (DP + EP: a failure restarts every replica)" \
        if p.enable_expert_parallel and p.data_parallel_size > 1 else \
        "a world per replica (a failure restarts that replica only)"
    table = Table(title=f"pypto serve: {cfg.model.name}, DP {p.data_parallel_size} x TP "
                  f"{p.tensor_parallel_size} x PP {p.pipeline_parallel_size}"
                  + (" + EP" if p.enable_expert_parallel else "") + f" on {c.platform}",
                  title_justify="left")
    for col in ("replica", "ranks", "node", "url" if router.endpoints[0].replica is not None
                else "routed by"):
        table.add_column(col)
    for d in range(p.data_parallel_size):
        first = d * per
        nodes = sorted({r // c.devices_per_node for r in range(first, first + per)})
        where = next((ep.url for ep in router.endpoints if ep.replica == d), None)
        table.add_row(str(d), f"{first}-{first + per - 1}" if per > 1 else str(first),
                      ",".join(map(str, nodes)), where or cfg.serve.policy)
    console.print(table)
    console.print(f"restart domains: {world}; context {cfg.model.max_seq_len} tokens")
    url = router.url
    auth = f" -H {shlex.quote('Authorization: Bearer ' + api_key)}" if api_key else ""
    body = f'{{"model": "{cfg.model.name}", "prompt": "Hello", "max_tokens": 16}}'
    console.print(f"serving on {url} (OpenAI API at {url}/v1) once the replicas are ready; "
                  "Ctrl-C to stop", markup=False, highlight=False)
    console.print(f"try: curl -s {url}/v1/completions -H 'Content-Type: application/json'"
                  f"{auth} -d {shlex.quote(body)}", markup=False, highlight=False, soft_wrap=True)
    sys.stdout.flush()


def register(app: typer.Typer) -> None:
    app.command("serve", help=HELP)(serve)
