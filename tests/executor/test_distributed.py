"""Clear errors before the groups exist and for a worker started the wrong way (in-process)."""

from __future__ import annotations

import json

import pytest
import torch

from pypto_serving.executor import distributed
from pypto_serving.executor.errors import (
    GroupsNotInitializedError,
    LaunchEnvError,
    PlatformUnavailableError,
)


@pytest.mark.parametrize("accessor", ["get_tp_group", "get_pp_group", "get_dp_group",
                                      "get_ep_group", "get_world_group"])
def test_accessors_before_init_say_what_to_call(accessor):
    kind = accessor.split("_")[1].upper()
    with pytest.raises(GroupsNotInitializedError, match=f"the {kind} group is not initialized"
                       r".*init_distributed\(\).*pypto launch"):
        getattr(distributed, accessor)()


def test_missing_launcher_env_names_the_variable_and_the_fix(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(LaunchEnvError, match="RANK is not set.*pypto launch --config FILE"):
        distributed.init_distributed()


def test_missing_config_env_is_explained(monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.delenv("PYPTO_CONFIG", raising=False)
    with pytest.raises(LaunchEnvError, match="PYPTO_CONFIG is not set"):
        distributed.init_distributed()


def test_world_size_that_disagrees_with_the_layout_is_refused(monkeypatch, tmp_path):
    config = tmp_path / "c.json"
    config.write_text(json.dumps({
        "parallel": {"tensor_parallel_size": 2, "data_parallel_size": 2},
        "model": {"num_experts": 0},
        "cluster": {"devices_per_node": 4, "platform": "cpu"},
    }))
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("PYPTO_CONFIG", str(config))
    with pytest.raises(LaunchEnvError, match="WORLD_SIZE=3 but the config's layout DP 2 x PP 1 "
                                             "x TP 2 needs 4 ranks"):
        distributed.init_distributed()
    assert not torch.distributed.is_initialized()


def test_a_platform_this_machine_lacks_is_refused_with_the_fix():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(PlatformUnavailableError, match="cluster.platform='cuda'.*'cpu'"):
        distributed.resolve_platform("cuda")
    assert distributed.resolve_platform("auto") in ("cpu", "npu")
    assert distributed.BACKENDS[distributed.resolve_platform("cpu")] == "gloo"


def test_coordinates_that_disagree_with_the_config_are_refused(monkeypatch, tmp_path):
    config = tmp_path / "c.json"
    config.write_text(json.dumps({
        "parallel": {"tensor_parallel_size": 2},
        "model": {"num_experts": 0},
        "cluster": {"devices_per_node": 2, "platform": "cpu"},
    }))
    for name, value in {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1",
                        "PYPTO_CONFIG": str(config), "PYPTO_TP_RANK": "0"}.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(LaunchEnvError, match="PYPTO_TP_RANK=0 but the config puts rank 1 at "
                                             "tp 1: the launcher and this worker read"):
        distributed.init_distributed()
    assert not torch.distributed.is_initialized()


def test_a_masked_device_is_index_zero():
    assert distributed._device_index(4, 3, "CUDA_VISIBLE_DEVICES") == 3
    assert distributed._device_index(1, 3, "CUDA_VISIBLE_DEVICES") == 0
    with pytest.raises(PlatformUnavailableError, match="LOCAL_RANK=3 but only 2 devices"):
        distributed._device_index(2, 3, "CUDA_VISIBLE_DEVICES")
