"""How the CLI reports user mistakes: a clear message on stderr and exit code 2."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

import typer

from ..core.errors import ConfigError

USAGE_ERROR = 2


def fail(message: str, code: int = USAGE_ERROR) -> typer.Exit:
    """Print `message` to stderr and return the Exit to raise."""
    sys.stderr.write(f"error: {message}\n" if not message.startswith("invalid config") else
                     f"{message}\n")
    return typer.Exit(code)


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn ConfigError (and other user-facing errors) into a message and exit code 2."""
    try:
        yield
    except ConfigError as e:
        raise fail(e.render()) from None
