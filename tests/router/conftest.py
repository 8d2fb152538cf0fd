"""Fixtures of the router tests: EngineServer-protocol peers and running routers."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from engine_peer import EnginePeer
from router_harness import RunningRouter


@pytest.fixture
def peers() -> Iterator[list[EnginePeer]]:
    made: list[EnginePeer] = []
    yield made
    for p in made:
        p.close()


@pytest.fixture
def make_router() -> Iterator:
    made: list[RunningRouter] = []

    def make(*args, **kwargs) -> RunningRouter:
        r = RunningRouter(*args, **kwargs)
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()
