"""The executor inside a service launch: a DP replica is its own torch world, its groups
are the replica's part of core's groups; under DP + EP the world is one group."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.timeout(120)


def test_init_distributed_in_a_replica_world(service):
    run = service.start(service.config(dp=2, tp=2), script="service_executor_worker.py")
    ready = {}
    for _ in range(2):
        e = run.until(lambda e: e.kind == "ready")
        ready[e.group] = e.payloads
    for group, first in ((0, 0), (1, 2)):
        for rank in (first, first + 1):
            p = ready[group][rank]
            assert p["tp"] == [first, first + 1] and p["world"] == [first, first + 1]
            assert p["dp"] == [rank]  # a replica's DP group is the rank itself
            assert p["dp_rank"] == group
            assert p["tp_sum"] == p["world_sum"] == (first + 1) + (first + 2)
        assert ready[group][first + 1]["from_prev"] == first * 10.0
    assert run.stop().exit_code == 0


def test_dp_with_ep_is_one_group_of_the_whole_world(service, tmp_path):
    import json

    from pypto_serving.core.loader import resolve_config

    cfg = json.loads(resolve_config(profile="cpu-demo").model_dump_json())  # DP 2 x TP 2 + EP
    path = tmp_path / "cpu-demo.json"
    path.write_text(json.dumps(cfg))
    run = service.start(path, script="service_executor_worker.py")
    ready = run.until(lambda e: e.kind == "ready")
    assert ready.group == 0 and ready.ranks == (0, 1, 2, 3)
    assert {r: p["dp"] for r, p in ready.payloads.items()} == {0: [0, 2], 1: [1, 3],
                                                                2: [0, 2], 3: [1, 3]}
    assert {p["world_sum"] for p in ready.payloads.values()} == {10.0}
    assert run.stop().exit_code == 0
