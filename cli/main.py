"""The `pypto` command: one typer app; each command group lives in its own module."""

from __future__ import annotations

import typer

from . import (
    check_comm_cmd,
    config_cmd,
    launch_cmd,
    model_cmd,
    profiles_cmd,
    serve_cmd,
    simulate_cmd,
    topo_cmd,
)

app = typer.Typer(
    name="pypto",
    help="PyPTO Serving parallel strategies: validate a layout, inspect it, launch workers.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
)
app.add_typer(config_cmd.app, name="config")
app.add_typer(topo_cmd.app, name="topo")
app.add_typer(model_cmd.app, name="model")
profiles_cmd.register(app)
launch_cmd.register(app)
check_comm_cmd.register(app)
simulate_cmd.register(app)
serve_cmd.register(app)

