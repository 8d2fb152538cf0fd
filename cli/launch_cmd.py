"""`pypto launch` (filled in by the launcher issue)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Placeholder until the launcher lands; adds no command."""
