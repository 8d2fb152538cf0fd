"""Precedence of config sources, defined once in core: defaults < profile < file < flags."""

from __future__ import annotations

import pytest

from pypto_serving.core.config import ServingConfig
from pypto_serving.core.errors import ConfigError
from pypto_serving.core.flags import CONFIG_FLAGS, overrides_from_flags
from pypto_serving.core.loader import load_profile, resolve_config


def test_defaults_alone():
    assert resolve_config() == ServingConfig()


def test_profile_over_defaults():
    cfg = resolve_config(profile="cpu-demo")
    assert cfg == load_profile("cpu-demo")
    assert cfg.parallel.data_parallel_size == 2 and cfg.cluster.platform == "cpu"


def test_file_over_profile_keeps_untouched_profile_fields(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text("[parallel]\nexpert_placement_strategy = \"round_robin\"\n")
    cfg = resolve_config(f, profile="cpu-demo")
    assert cfg.parallel.expert_placement_strategy == "round_robin"  # file
    assert cfg.parallel.tensor_parallel_size == 2  # profile
    assert cfg.model.num_experts == 8  # profile


def test_flags_over_file_and_profile(tmp_path):
    f = tmp_path / "c.json"
    f.write_text('{"parallel": {"tensor_parallel_size": 2}}')
    flags = overrides_from_flags({"parallel.tensor_parallel_size": 4,
                                  "parallel.data_parallel_size": 1,
                                  "parallel.pipeline_parallel_size": None})
    assert flags == {"parallel": {"tensor_parallel_size": 4, "data_parallel_size": 1}}
    cfg = resolve_config(f, profile="cpu-demo", overrides=flags)
    assert cfg.parallel.tensor_parallel_size == 4
    assert cfg.parallel.data_parallel_size == 1


def test_model_profile_flag_replaces_model_section():
    cfg = resolve_config(profile="cpu-demo", model_profile_name="small-moe")
    assert cfg.model.name == "small-moe"


def test_flag_error_names_flag_and_field():
    with pytest.raises(ConfigError) as e:
        resolve_config(overrides={"parallel": {"tensor_parallel_size": 3}},
                       flag_names={"parallel.tensor_parallel_size": "--tensor-parallel-size"})
    text = e.value.render()
    assert "parallel.tensor_parallel_size=3 (from --tensor-parallel-size)" in text
    assert "use 1, 2, 4 or 8" in text


def test_devices_per_node_is_derived_only_when_unset():
    assert resolve_config(overrides={"parallel": {"tensor_parallel_size": 8}}
                          ).cluster.devices_per_node == 8
    with pytest.raises(ConfigError, match="cluster.devices_per_node=4"):
        resolve_config(overrides={"parallel": {"tensor_parallel_size": 8},
                                  "cluster": {"devices_per_node": 4}})
    with pytest.raises(ConfigError, match="does not split evenly over 3 nodes"):
        resolve_config(overrides={"parallel": {"tensor_parallel_size": 4},
                                  "cluster": {"nnodes": 3}})


def test_every_flag_maps_to_a_real_field_with_help():
    types = {f.name: f.value_type for f in CONFIG_FLAGS}
    assert types["--devices-per-node"] is int and types["--data-parallel-size-local"] is int
    assert types["--tensor-parallel-size"] is int and types["--enable-expert-parallel"] is bool
    assert types["--platform"] is str
    for flag in CONFIG_FLAGS:
        assert flag.help, flag.name
        section, field = flag.path.split(".")
        assert field in type(getattr(ServingConfig(), section)).model_fields


def test_a_flag_that_contradicts_the_profile_is_named_on_the_file_field():
    with pytest.raises(ConfigError) as e:
        resolve_config(profile="cpu-demo", overrides={"parallel": {"tensor_parallel_size": 4}},
                       flag_names={"parallel.tensor_parallel_size": "--tensor-parallel-size"})
    (issue,) = [i for i in e.value.issues if i.field == "cluster.devices_per_node"]
    assert str(issue).startswith(
        "cluster.devices_per_node=4 (with --tensor-parallel-size): the layout needs DP 2 x "
        "PP 1 x TP 4 = 8 ranks")


def test_tp_groups_must_not_straddle_nodes():
    with pytest.raises(ConfigError) as e:
        resolve_config(overrides={"parallel": {"data_parallel_size": 3, "tensor_parallel_size": 4},
                                  "cluster": {"nnodes": 2}})
    assert str(e.value.issues[0]) == (
        "cluster.devices_per_node=6: TP groups of 4 consecutive ranks would straddle nodes "
        "(ranks 4-7 span nodes 0 and 1); use a multiple of 4 devices per node, or a divisor "
        "of 4 for TP across whole nodes")
    # TP across whole nodes is fine: TP 8 over two 4-device nodes.
    assert resolve_config(overrides={"parallel": {"tensor_parallel_size": 8},
                                     "cluster": {"nnodes": 2}}).cluster.devices_per_node == 4


def test_odd_head_dim_is_refused_for_rotary():
    with pytest.raises(ConfigError, match=r"model.hidden_size=24: gives head_dim = 24 / 8 = 3, "
                       r"but rotary embeddings need an even head_dim; use a multiple of 16"):
        resolve_config(overrides={"model": {"hidden_size": 24}})
