"""Layout search: every candidate is either ranked (valid by the contract and fitting in
memory) or dropped with its reasons; the ranking is by decode throughput first."""

from __future__ import annotations

import pytest

from pypto_serving.core.config import ServingConfig
from pypto_serving.core.cost_model import Workload
from pypto_serving.core.errors import ConfigError
from pypto_serving.core.hardware import hardware_profile
from pypto_serving.core.layout_search import RanksError, cluster_for, search
from pypto_serving.core.loader import model_profile, parse_config

pytestmark = pytest.mark.timeout(120)


def _factor_count(n: int) -> int:
    return sum(1 for dp in range(1, n + 1) for pp in range(1, n + 1)
               if n % dp == 0 and (n // dp) % pp == 0)


@pytest.mark.parametrize("model,ranks,hardware", [
    ("mixtral-8x7b-shape", 16, "h200-nvlink-ib"),
    ("deepseek-v3-shape", 64, "h200-nvlink-ib"),
    ("llama-8b-shape", 32, "ascend-910b-8"),
    ("small-moe", 8, "cpu-host"),
])
def test_ranked_layouts_are_valid_and_dropped_ones_say_why(model, ranks, hardware):
    hw = hardware_profile(hardware)
    base = ServingConfig(model=model_profile(model))
    result = search(base, hw, Workload(), ranks)
    variants = 3 if base.model.is_moe else 1
    assert result.considered == _factor_count(ranks) * variants
    assert result.ranked, "some layout must be valid"
    for cost in result.ranked:
        cfg = parse_config(cost.config.model_dump(mode="json"))  # the contract admits it
        assert cfg.parallel.world_size == ranks
        assert cost.memory.fits and cost.memory.headroom_bytes >= 0
    for dropped in result.dropped:
        assert dropped.reasons and all(r.strip() for r in dropped.reasons), dropped
    throughput = [c.decode_tokens_per_s for c in result.ranked]
    assert throughput == sorted(throughput, reverse=True)


def test_dropped_reasons_are_the_contracts_own():
    hw = hardware_profile("h200-nvlink-ib")
    base = ServingConfig(model=model_profile("mixtral-8x7b-shape"))
    result = search(base, hw, Workload(), 16)
    by_label = {d.label: d.reasons for d in result.dropped}
    data = {"parallel": {"data_parallel_size": 16, "enable_expert_parallel": True},
            "model": base.model.model_dump(), "cluster": cluster_for(16, hw)}
    with pytest.raises(ConfigError) as err:
        parse_config(data)
    assert by_label["DP 16 x PP 1 x TP 1 + EP 16 (linear)"] == tuple(str(i)
                                                                     for i in err.value.issues)


def test_layouts_that_do_not_fit_in_memory_are_dropped_with_the_memory_they_lack():
    """DeepSeek-V3's shape on 8 H200s: every layout holds all of its ~1.3 TB of weights, so
    every one is dropped, each saying so."""
    hw = hardware_profile("h200-nvlink-ib")
    result = search(ServingConfig(model=model_profile("deepseek-v3-shape")), hw, Workload(), 8)
    assert not result.ranked
    memory = [d for d in result.dropped if d.reasons[0].startswith("memory:")]
    assert memory and all("GiB of weights per rank exceed" in d.reasons[0] for d in memory)


def test_ranks_the_hardware_cannot_hold_are_refused():
    hw = hardware_profile("h200-nvlink-ib")
    with pytest.raises(RanksError, match="use 8 or 16"):
        search(ServingConfig(), hw, Workload(), 12)
