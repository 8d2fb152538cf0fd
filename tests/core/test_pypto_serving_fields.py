"""PyPTO Serving's own words in the parallel section: expert_parallel_size, placement_mode."""

from __future__ import annotations

import pytest

from pypto_serving.core.errors import ConfigError
from pypto_serving.core.loader import load_profile, parse_config
from pypto_serving.core.topology import resolve_topology

MOE = {"num_experts": 8}


def issue(parallel: dict) -> str:
    with pytest.raises(ConfigError) as e:
        parse_config({"parallel": parallel, "model": MOE})
    (only,) = e.value.issues
    return str(only)


def test_overlapped_deepseek_layout_reads_as_pypto_serving_writes_it():
    cfg = load_profile("dp8-ep8-overlapped")
    p = cfg.parallel
    assert (p.placement_mode, p.expert_parallel_size) == ("overlapped", 8)
    topo = resolve_topology(cfg)
    assert topo.group("ep", 0).ranks == tuple(range(8))  # one EP group over all 8 replicas
    assert [topo.rank_info(r).dp for r in range(8)] == list(range(8))
    assert topo.rank_info(3).experts == tuple(range(96, 128))


def test_explicit_ep_size_must_match_dp_times_tp():
    ok = parse_config({"parallel": {"data_parallel_size": 2, "tensor_parallel_size": 2,
                                    "enable_expert_parallel": True, "expert_parallel_size": 4},
                       "model": MOE})
    assert ok.parallel.ep_size == 4
    assert issue({"data_parallel_size": 2, "tensor_parallel_size": 2,
                  "enable_expert_parallel": True, "expert_parallel_size": 8}) == (
        "parallel.expert_parallel_size=8: the EP group spans DP 2 x TP 2 = 4 ranks of one "
        "stage; use 4 or leave it null")
    assert issue({"data_parallel_size": 2, "expert_parallel_size": 2}).startswith(
        "parallel.expert_parallel_size=2: experts are partitioned only with "
        "enable_expert_parallel=true")


def test_placement_mode_must_agree_with_expert_parallelism():
    assert issue({"data_parallel_size": 2, "placement_mode": "overlapped"}) == (
        "parallel.placement_mode='overlapped': lays one EP group over the DP replicas' "
        "devices; set enable_expert_parallel=true (or use 'replica')")
    assert "use 'overlapped'" in issue({"data_parallel_size": 2, "placement_mode": "replica",
                                        "enable_expert_parallel": True})
    replica = parse_config({"parallel": {"data_parallel_size": 2, "tensor_parallel_size": 2,
                                         "placement_mode": "replica"}, "model": MOE})
    assert "ep" not in resolve_topology(replica).group_kinds
