"""Shared fixtures: free ports, the CLI runner, paths."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A TCP port nobody listens on right now (bound and released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def repo_root() -> Path:
    return ROOT


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture
def cli():
    """Invoke `pypto` in-process through typer's runner: cli(["topo", "show"]) -> Result."""
    from typer.testing import CliRunner

    from pypto_serving.cli.main import app

    runner = CliRunner()

    def invoke(args: list[str], **kw):
        return runner.invoke(app, args, **kw)

    return invoke
