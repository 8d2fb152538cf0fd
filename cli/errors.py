"""How the CLI reports user mistakes: a clear message on stderr and exit code 2."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

import typer

from ..core.errors import USAGE_ERROR, ConfigError


def fail(message: str, code: int = USAGE_ERROR) -> typer.Exit:
    """Print `error: message` to stderr and return the Exit to raise."""
    sys.stderr.write(f"error: {message}\n")
    return typer.Exit(code)


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn a ConfigError into its own report (every problem, one per line) and exit 2."""
    try:
        yield
    except ConfigError as e:
        sys.stderr.write(e.render() + "\n")
        raise typer.Exit(USAGE_ERROR) from None
