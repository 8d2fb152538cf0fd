"""Random config mappings never escape as anything but ConfigError, the exported JSON Schema
and the loader give the same verdict on each, and every config that loads is written out
(YAML, TOML, JSON) and loads back to itself (hypothesis fuzzing).

Generators: arbitrary nested junk; a valid config with a few fields replaced by random
values, by values just inside and just outside each bound the schema states, or by any
value the schema admits (which reaches the cross-field rules far more often).
"""

from __future__ import annotations

import math
import sys

import jsonschema
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from pypto_serving.core.config import ServingConfig
from pypto_serving.core.errors import ConfigError
from pypto_serving.core.loader import load_config, load_profile, parse_config, profile_names
from pypto_serving.core.serialize import OUTPUT_FORMATS, config_json_schema, dump_config
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


# --- values from the exported schema --------------------------------------------------------

SCHEMA = config_json_schema()
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)
FIELD_SCHEMAS = {
    section: SCHEMA["$defs"][prop["$ref"].rsplit("/", 1)[-1]]["properties"]
    for section, prop in SCHEMA["properties"].items()
}
LARGEST = sys.float_info.max


def admitted(schema: dict) -> st.SearchStrategy:
    """Every JSON value `schema` admits: whole ranges of numbers (huge, tiny, subnormal),
    any Unicode text (controls, quotes, backslashes, emoji), every enum member, null."""
    if "anyOf" in schema:
        return st.one_of(*[admitted(s) for s in schema["anyOf"]])
    if "$ref" in schema:  # a nested section (model.rope_scaling)
        sub = SCHEMA["$defs"][schema["$ref"].rsplit("/", 1)[-1]]
        required = sub.get("required", [])
        return st.fixed_dictionaries(
            {k: admitted(sub["properties"][k]) for k in required},
            optional={k: admitted(v) for k, v in sub["properties"].items() if k not in required})
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    kind = schema.get("type")
    if kind == "null":
        return st.none()
    if kind == "boolean":
        return st.booleans()
    if kind == "string":
        return st.one_of(st.text(), st.text(st.characters(codec="utf-8"), max_size=8),
                         st.sampled_from(['"', "\\", "\n", "'\"\\\t", "\x00\x1b\x7f\x85",
                                          "\u2028\ufeff", "😀", "深度", "null", "yes", "1e3"]))
    if kind == "integer":
        lo, hi = schema.get("minimum"), schema.get("maximum")
        whole = st.integers(lo, hi if hi is not None else 10**30)
        return st.one_of(whole, whole.map(float).filter(lambda f: f.is_integer()),
                         st.integers(lo, hi if hi is not None else 10**4000))
    if kind == "number":
        lo = schema.get("minimum", schema.get("exclusiveMinimum"))
        hi = schema.get("maximum", schema.get("exclusiveMaximum"))
        return st.floats(lo, hi, exclude_min="exclusiveMinimum" in schema,
                         exclude_max="exclusiveMaximum" in schema, allow_nan=False)
    if kind == "array":
        return st.lists(admitted(schema["items"]), max_size=6)
    raise AssertionError(f"no strategy for {schema}")


def edges(schema: dict) -> list:
    """Values on and just past each bound the schema states, and near misses of its enums."""
    if "anyOf" in schema:
        return [v for s in schema["anyOf"] for v in edges(s)]
    if "enum" in schema:
        return [v.upper() for v in schema["enum"]] + ["", None, 1]
    out: list = []
    integer = schema.get("type") == "integer"
    for key, step in (("minimum", -1), ("exclusiveMinimum", 1), ("maximum", 1),
                      ("exclusiveMaximum", -1)):
        if key in schema:
            bound = schema[key]
            if integer:
                out += [bound, bound - step, bound + step, float(bound), float(bound - step)]
            else:
                out += [bound, math.nextafter(bound, step * math.inf),
                        math.nextafter(bound, -step * math.inf), math.inf, -math.inf]
    if schema.get("type") == "array":
        out += [[e] for e in edges(schema["items"])]
    return out


def field_paths() -> list[tuple[str, str]]:
    return [(sec, name) for sec, props in FIELD_SCHEMAS.items() for name in props]


PATHS = field_paths()
assert len(PATHS) == sum(len(f) for f in FIELDS.values())  # the schema lists every field


@st.composite
def mutated(draw):
    """The valid BASE config with 1-3 fields set to random values, values at and past the
    schema's bounds, or values the schema admits."""
    data = {section: dict(fields) for section, fields in BASE.items()}
    for _ in range(draw(st.integers(1, 3))):
        section, name = draw(st.sampled_from(PATHS))
        schema = FIELD_SCHEMAS[section][name]
        value = draw(st.one_of(values, st.sampled_from(edges(schema) or [None]),
                               admitted(schema)))
        data.setdefault(section, {})[name] = value
    return data


def has_nan(value) -> bool:
    if isinstance(value, float):
        return math.isnan(value)
    if isinstance(value, dict):
        return any(has_nan(v) for v in value.values())
    if isinstance(value, list):
        return any(has_nan(v) for v in value)
    return False


def check_schema_agrees(data) -> None:
    """jsonschema admits `data` exactly when the loader finds no problem with a field.

    The loader's cross-field rules (TP must divide the heads, ...) lie beyond JSON Schema:
    they are the issues that name the other fields they read (`related`). JSON has no NaN,
    so a NaN is outside the schema's domain and not compared; so is a model.path (whether it
    is a checkpoint folder is the file system's to say).
    """
    model = data.get("model") if isinstance(data, dict) else None
    if has_nan(data) or (isinstance(model, dict) and model.get("path") is not None):
        return
    schema_ok = VALIDATOR.is_valid(data)
    try:
        parse_config(data)
        fields_ok = True
    except ConfigError as e:
        fields_ok = all(issue.related for issue in e.issues)
        field_issues = [str(i) for i in e.issues if not i.related]
    else:
        field_issues = []
    schema_errors = [f"{'.'.join(map(str, err.absolute_path))}: {err.message[:200]}"
                     for err in VALIDATOR.iter_errors(data)]
    assert schema_ok == fields_ok, (schema_errors, field_issues)


def check_outcome(data) -> None:
    check_schema_agrees(data)
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


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(PATHS).flatmap(
    lambda path: st.tuples(st.just(path), st.sampled_from(edges(FIELD_SCHEMAS[path[0]][path[1]])
                                                          or [None]))))
def test_schema_and_loader_agree_at_every_bound(case):
    (section, name), value = case
    data = {s: dict(f) for s, f in BASE.items()}
    data.setdefault(section, {})[name] = value
    check_schema_agrees(data)


# --- round trips ----------------------------------------------------------------------------

BASES = [load_profile(name).model_dump(mode="json") for name in profile_names()]


@st.composite
def admitted_configs(draw):
    """A shipped profile with any subset of fields set to any value the schema admits;
    only configs that pass the cross-field rules are kept."""
    data = draw(st.sampled_from(BASES))
    data = {section: dict(fields) for section, fields in data.items()}
    cfg = parse_config(data)
    # Each drawn value is kept only if the config still passes the cross-field rules, so
    # every example yields a config (rejecting whole draws made the test run for minutes).
    for section, name in draw(st.sets(st.sampled_from(PATHS), min_size=1, max_size=12)):
        value = draw(admitted(FIELD_SCHEMAS[section][name]))
        trial = {**data, section: {**data[section], name: value}}
        assert VALIDATOR.is_valid(trial)
        try:
            cfg = parse_config(trial)
        except ConfigError:
            continue
        data = trial
    return cfg


@pytest.mark.parametrize("fmt", OUTPUT_FORMATS)
# Most drawn configs break a cross-field rule and are filtered out, so examples are costly:
# 60 per format, and no explain phase (its tracing made one failing run take minutes).
@settings(max_examples=60, deadline=None,
          phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                 HealthCheck.function_scoped_fixture])
@given(cfg=admitted_configs(), comments=st.booleans())
def test_every_admitted_config_round_trips(tmp_path, fmt, cfg, comments):
    """What `config init` (comments) and `config validate --show` write loads back equal."""
    path = tmp_path / f"c.{fmt}"
    path.write_bytes(dump_config(cfg, fmt, comments=comments).encode("utf-8"))
    assert load_config(path) == cfg
