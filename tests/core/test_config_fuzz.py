"""Random config mappings never escape as anything but ConfigError (hypothesis fuzzing).

Two generators: arbitrary nested junk, and a valid config with a few fields replaced by
random values (which reaches the cross-field rules far more often).
"""

from __future__ import annotations

import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pypto_serving.core.config import ServingConfig
from pypto_serving.core.errors import ConfigError
from pypto_serving.core.loader import parse_config
from pypto_serving.core.topology import resolve_topology

FIELDS = {name: list(field.annotation.model_fields)
          for name, field in ServingConfig.model_fields.items()}

BASE = {
    "parallel": {"data_parallel_size": 2, "tensor_parallel_size": 2,
                 "enable_expert_parallel": True},
    "model": {"num_layers": 4, "num_attention_heads": 8, "num_kv_heads": 4,
              "hidden_size": 64, "intermediate_size": 128, "num_experts": 8},
    "cluster": {"nnodes": 1, "devices_per_node": 4, "platform": "cpu"},
}

small_ints = st.integers(-3, 40)
values = st.one_of(
    small_ints, small_ints, st.integers(-(10**30), 10**30), st.none(), st.booleans(),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
    st.sampled_from(["linear", "round_robin", "cpu", "npu", "nccl", "4", "2.0", ""]),
    st.lists(small_ints, max_size=5), st.dictionaries(st.text(max_size=4), small_ints,
                                                       max_size=2),
)
keys = st.one_of(st.sampled_from([f for fs in FIELDS.values() for f in fs]),
                 st.text(max_size=8))
sections = st.dictionaries(keys, values, max_size=6)
junk = st.one_of(
    st.dictionaries(st.one_of(st.sampled_from(list(FIELDS)), st.text(max_size=8)),
                    st.one_of(sections, values), max_size=5),
    values,
)


@st.composite
def mutated(draw):
    """The valid BASE config with 1-3 fields set to random values."""
    data = {section: dict(fields) for section, fields in BASE.items()}
    for _ in range(draw(st.integers(1, 3))):
        section = draw(st.sampled_from(list(FIELDS)))
        data.setdefault(section, {})[draw(st.sampled_from(FIELDS[section]))] = draw(values)
    return data


def check_outcome(data) -> None:
    try:
        cfg = parse_config(data, "fuzz.yaml")
    except ConfigError as e:
        assert e.issues
        assert all(str(issue).strip() for issue in e.issues)
        text = e.render()
        assert text.startswith("invalid config from fuzz.yaml: ") and "Traceback" not in text
        return
    assert isinstance(cfg, ServingConfig)
    p, m, c = cfg.parallel, cfg.model, cfg.cluster
    assert p.world_size == c.nnodes * c.devices_per_node
    assert m.num_attention_heads % p.tensor_parallel_size == 0
    assert math.isfinite(m.rope_theta)
    topo = resolve_topology(cfg)
    if m.num_experts <= 4096:  # without EP every rank lists every expert id
        last = topo.rank_info(topo.world_size - 1)
        assert last.rank == topo.world_size - 1
        for kind in topo.group_kinds:
            if topo.layout.group_size(kind) <= 4096:
                assert topo.world_size - 1 in topo.group(kind, last.rank).ranks


FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(junk)
def test_random_mappings_give_config_or_config_error(data):
    check_outcome(data)


@FUZZ
@given(mutated())
def test_mutated_valid_configs_give_config_or_config_error(data):
    check_outcome(data)
