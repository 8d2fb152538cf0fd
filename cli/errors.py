"""How the CLI reports user mistakes: a clear message on stderr and exit code 2."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

import typer

from ..core.errors import USAGE_ERROR, ConfigError, escape


def fail(message: str, code: int = USAGE_ERROR) -> typer.Exit:
    """Print `error: message` to stderr and return the Exit to raise. Control characters a
    message echoes (a file name, a flag's value) are written as escapes, line by line."""
    text = "\n".join(escape(line, keep="\t") for line in message.split("\n"))
    sys.stderr.write(f"error: {text}\n")
    return typer.Exit(code)


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn a ConfigError into its own report (every problem, one per line) and exit 2."""
    try:
        yield
    except ConfigError as e:
        sys.stderr.write(e.render() + "\n")
        raise typer.Exit(USAGE_ERROR) from None
