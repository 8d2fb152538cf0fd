"""The topology document: streamed JSON equals the document, and every list in it is bounded
by the limit (ranks, groups, members, experts), with counts for what was left out."""

from __future__ import annotations

import json

import pytest

from pypto_serving.core.loader import profile_names, resolve_config
from pypto_serving.core.report import (
    MAX_LIMIT,
    LimitError,
    iter_topology_json,
    topology_document,
)
from pypto_serving.core.topology import resolve_topology


@pytest.mark.parametrize("name", profile_names())
@pytest.mark.parametrize("limit, rank", [(1, None), (3, None), (64, None), (2, 1)])
def test_streamed_json_is_the_document(name, limit, rank):
    topo = resolve_topology(resolve_config(profile=name))
    text = "".join(iter_topology_json(topo, rank, None, limit))
    assert json.loads(text) == topology_document(topo, rank, None, limit)
    assert len(text.splitlines()) > 10  # laid out over lines, not one blob


def test_every_list_is_bounded_by_the_limit():
    cfg = resolve_config(overrides={"parallel": {"data_parallel_size": 4,
                                                 "tensor_parallel_size": 2}})
    doc = topology_document(resolve_topology(cfg), limit=3)
    assert len(doc["ranks"]) == 3 and doc["ranks_truncated"]
    rank0 = doc["ranks"][0]  # TP-sharded experts: every rank holds all 8
    assert rank0["experts"] == [0, 1, 2] and rank0["experts_truncated"]
    assert rank0["num_experts_held"] == 8
    world = doc["groups"]["world"]["groups"][0]
    assert world["ranks"] == [0, 1, 2] and world["ranks_truncated"] and world["size"] == 8
    assert len(doc["groups"]["tp"]["groups"]) == 3 and doc["groups"]["tp"]["count"] == 4


@pytest.mark.parametrize("limit", [0, -1, MAX_LIMIT + 1, 10**30])
def test_limit_outside_the_bound_is_refused_before_anything_is_built(limit):
    topo = resolve_topology(resolve_config(profile="cpu-demo"))
    with pytest.raises(LimitError, match=f"outside 1..{MAX_LIMIT}"):
        topology_document(topo, limit=limit)
    with pytest.raises(LimitError):
        next(iter_topology_json(topo, limit=limit))
