"""`pypto config validate | schema | init`: check, describe and start config files."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from ..core.loader import DEFAULT_PROFILE, FORMATS
from ..core.report import layout_summary
from ..core.serialize import OUTPUT_FORMATS, config_json_schema, dump_config
from .errors import fail, user_errors
from .options import ConfigSource, config_options

app = typer.Typer(
    help="Validate, describe and create serving config files.\n\n"
         "Example: pypto config init -o serving.yaml && pypto config validate serving.yaml",
    no_args_is_help=True)


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
        _print_config(dump_config(cfg, FORMATS.get(file.suffix.lower(), "yaml"), comments=False))
        return
    typer.echo(f"OK {file}: {layout_summary(cfg)}")


@app.command("schema")
def schema() -> None:
    """Print the JSON Schema of the whole serving config, for editors and CI checks.

    Example: pypto config schema > pypto-serving.schema.json
    """
    typer.echo(json.dumps(config_json_schema(), indent=2))


@app.command("init")
@config_options
def init(
    output: Annotated[Path | None, typer.Option("-o", "--output", help="File to write; "
                                                "stdout when omitted.")] = None,
    fmt: Annotated[str | None, typer.Option("--format", help="yaml, toml or json; "
                                            "by default from the output's extension, else yaml.")
                   ] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
    source: ConfigSource = None,
) -> None:
    """Write a complete starter config: every field at its value, described in comments.
    It starts from --profile (default cpu-demo) with any layout flags applied.

    Example: pypto config init --profile tp8-one-node -o serving.toml
    """
    by_suffix = FORMATS.get(output.suffix.lower()) if output else None
    if output is not None and by_suffix is None:
        raise fail(f"{output}: use a .yaml, .yml, .toml or .json name so the file can be loaded")
    fmt = fmt or by_suffix or "yaml"
    if fmt not in OUTPUT_FORMATS:
        raise fail(f"--format {fmt!r} is not supported; use yaml, toml or json")
    if by_suffix is not None and fmt != by_suffix:
        raise fail(f"--format {fmt} does not match {output.name}; drop --format or rename the "
                   f"file to .{fmt}")
    with user_errors():
        text = dump_config(source.resolve(default_profile=DEFAULT_PROFILE), fmt)
    if output is None:
        _print_config(text)
        return
    if output.exists() and not force:
        raise fail(f"{output} exists; pass --force to overwrite it")
    try:
        output.write_text(text, encoding="utf-8")
    except OSError as e:
        raise fail(f"cannot write {output}: {e.strerror}") from None
    typer.echo(f"wrote {output} ({fmt})")


def _print_config(text: str) -> None:
    """Config text on stdout as UTF-8, the encoding the loader reads, whatever the locale
    (an emoji in a model name must not fail on an ASCII terminal)."""
    buffer = getattr(sys.stdout, "buffer", None)
    if buffer is None:
        sys.stdout.write(text)
        return
    sys.stdout.flush()
    buffer.write(text.encode("utf-8"))
    buffer.flush()
