"""Config files in every format load to the same config; every bad file is a ConfigError."""

from __future__ import annotations

import json

import pytest

from pypto_serving.core.errors import ConfigError
from pypto_serving.core.loader import load_config, resolve_config

YAML = """\
parallel:
  data_parallel_size: 2
  tensor_parallel_size: 2
  enable_expert_parallel: true
  expert_placement_strategy: round_robin
model:
  num_experts: 6
cluster:
  devices_per_node: 4
  platform: cpu
"""

TOML = """\
[parallel]
data_parallel_size = 2
tensor_parallel_size = 2
enable_expert_parallel = true
expert_placement_strategy = "round_robin"

[model]
num_experts = 6

[cluster]
devices_per_node = 4
platform = "cpu"
"""

DATA = {
    "parallel": {"data_parallel_size": 2, "tensor_parallel_size": 2,
                 "enable_expert_parallel": True, "expert_placement_strategy": "round_robin"},
    "model": {"num_experts": 6},
    "cluster": {"devices_per_node": 4, "platform": "cpu"},
}


def error_text(path) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return info.value.render()


def test_json_yaml_yml_and_toml_give_the_same_config(tmp_path):
    files = {"c.json": json.dumps(DATA), "c.yaml": YAML, "c.yml": YAML, "c.toml": TOML}
    configs = []
    for name, text in files.items():
        (tmp_path / name).write_text(text)
        configs.append(load_config(tmp_path / name))
    assert all(c == configs[0] for c in configs)
    cfg = configs[0]
    assert cfg.parallel.world_size == 4
    assert cfg.parallel.expert_placement_strategy == "round_robin"
    assert cfg.model.num_experts == 6 and cfg.model.num_layers == 4  # default kept


def test_empty_yaml_is_the_default_config(tmp_path):
    (tmp_path / "empty.yaml").write_text("")
    assert load_config(tmp_path / "empty.yaml").parallel.world_size == 1


def test_missing_file(tmp_path):
    path = tmp_path / "nope.yaml"
    assert error_text(path) == f"invalid config: 1 problem\n  - {path}: no such file"


def test_unknown_extension_names_the_formats(tmp_path):
    (tmp_path / "c.ini").write_text("[parallel]\n")
    assert error_text(tmp_path / "c.ini").endswith(
        "unknown config format '.ini'; use .json, .yaml, .yml or .toml")


@pytest.mark.parametrize("name,text,fmt", [
    ("bad.json", '{"parallel": {"data_parallel_size": 2,,}}', "JSON"),
    ("bad.yaml", "parallel:\n  data_parallel_size: [2\n", "YAML"),
    ("bad.toml", "[parallel\ndata_parallel_size = 2\n", "TOML"),
])
def test_malformed_file_names_file_and_format(tmp_path, name, text, fmt):
    (tmp_path / name).write_text(text)
    text = error_text(tmp_path / name)
    assert f"{tmp_path / name}: not valid {fmt}: " in text
    assert "Traceback" not in text


def test_top_level_must_be_a_mapping(tmp_path):
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    assert error_text(tmp_path / "list.yaml").endswith(
        "the top level must be a mapping of sections (parallel, model, cluster, serve), "
        "not list")


def test_file_errors_carry_the_file_name_and_field(tmp_path):
    (tmp_path / "c.toml").write_text("[parallel]\ntensor_parallel_size = 3\n")
    text = error_text(tmp_path / "c.toml")
    assert text.startswith(f"invalid config from {tmp_path / 'c.toml'}: 1 problem")
    assert "parallel.tensor_parallel_size=3: model.num_attention_heads=8 is not divisible" in text


def test_unknown_profile_suggests_a_close_name():
    with pytest.raises(ConfigError) as info:
        resolve_config(profile="cpu-dem")
    assert "unknown profile 'cpu-dem'; did you mean 'cpu-demo'?" in info.value.render()
