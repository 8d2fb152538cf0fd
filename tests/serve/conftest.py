"""Fixtures of the end-to-end serve tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from serve_harness import ServeProcess


@pytest.fixture(scope="module")
def serve_factory() -> Iterator:
    made: list[ServeProcess] = []

    def make(*args: str, replicas: int, **kw) -> ServeProcess:
        s = ServeProcess(*args, replicas=replicas, **kw)
        made.append(s)
        return s

    yield make
    for s in made:
        if s.proc.poll() is None:
            s.kill_all()
