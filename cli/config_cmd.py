"""`pypto config validate | schema | init`: check, describe and start config files."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from ..core.loader import FORMATS, profile_names
from ..core.report import layout_summary
from ..core.serialize import OUTPUT_FORMATS, config_json_schema, dump_config
from .errors import fail, user_errors
from .options import ConfigSource, config_options

app = typer.Typer(help="Validate, describe and create serving config files.", no_args_is_help=True)


@app.command("validate")
@config_options
def validate(
    file: Annotated[Path, typer.Argument(help="Config file (.json, .yaml, .yml or .toml).")],
    show: Annotated[bool, typer.Option("--show", help="Print the config as resolved "
                                       "(defaults filled in, flags applied) in the file's format.")
                    ] = False,
    source: ConfigSource = None,
) -> None:
    """Check a config file and report every problem at once (exit 0 when valid, 2 when not).

    Example: pypto config validate serving.yaml -tp 4 --show
    """
    with user_errors():
        cfg = source.resolve(file)
    if show:
        sys.stdout.write(dump_config(cfg, FORMATS.get(file.suffix.lower(), "yaml"), comments=False))
        return
    typer.echo(f"OK {file}: {layout_summary(cfg)}")


@app.command("schema")
def schema() -> None:
    """Print the JSON Schema of the whole serving config, for editors and CI checks.

    Example: pypto config schema > pypto-serving.schema.json
    """
    typer.echo(json.dumps(config_json_schema(), indent=2))


@app.command("init")
def init(
    profile: Annotated[str, typer.Option("--profile", help="Shipped profile to start from.")
                       ] = "cpu-demo",
    output: Annotated[Path | None, typer.Option("-o", "--output", help="File to write; "
                                                "stdout when omitted.")] = None,
    fmt: Annotated[str | None, typer.Option("--format", help="yaml, toml or json; "
                                            "by default from the output's extension, else yaml.")
                   ] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
) -> None:
    """Write a complete starter config: every field at its value, described in comments.

    Example: pypto config init --profile tp8-one-node -o serving.toml
    """
    from ..core.loader import load_profile

    if fmt is None:
        fmt = FORMATS.get(output.suffix.lower(), "yaml") if output else "yaml"
    if fmt not in OUTPUT_FORMATS:
        raise fail(f"--format {fmt!r} is not supported; use yaml, toml or json")
    if profile not in profile_names():
        raise fail(f"unknown profile {profile!r}; shipped: {', '.join(profile_names())}")
    with user_errors():
        text = dump_config(load_profile(profile), fmt)
    if output is None:
        sys.stdout.write(text)
        return
    if output.exists() and not force:
        raise fail(f"{output} exists; pass --force to overwrite it")
    try:
        output.write_text(text, encoding="utf-8")
    except OSError as e:
        raise fail(f"cannot write {output}: {e.strerror}") from None
    typer.echo(f"wrote {output} ({fmt}, profile {profile})")
