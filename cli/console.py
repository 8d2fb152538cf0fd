"""The one rich Console factory: full-width tables when output is piped or captured."""

from __future__ import annotations

from rich.console import Console

PIPED_WIDTH = 160


def make_console(record: bool = False) -> Console:
    console = Console(record=record)
    if not console.is_terminal:
        console.width = max(console.width, PIPED_WIDTH)  # keep every column whole
    return console
