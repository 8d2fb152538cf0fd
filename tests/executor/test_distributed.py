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


def test_the_launcher_and_the_executor_read_auto_the_same_here():
    from pypto_serving.launcher.devices import detect_platform

    assert distributed.resolve_platform("auto") == detect_platform()


def _one_rank_env(monkeypatch, tmp_path, **extra) -> None:
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"model": {"num_experts": 0},
                                  "cluster": {"devices_per_node": 1, "platform": "cpu"}}))
    for name, value in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0",
                        "PYPTO_CONFIG": str(config), **extra}.items():
        monkeypatch.setenv(name, value)


@pytest.mark.parametrize(("named", "message"), [
    ("cuda:0", "PYPTO_DEVICE=cuda:0 but cluster.platform is 'cpu': the launcher and this "
               "worker disagree"),
    ("gpu:0", "PYPTO_DEVICE='gpu:0' is not a device name like 'cuda:0' or 'cpu'"),
])
def test_the_device_the_launcher_named_is_the_one_used(monkeypatch, tmp_path, named, message):
    """PYPTO_DEVICE is read, not re-derived from LOCAL_RANK: a contradicting one is refused."""
    _one_rank_env(monkeypatch, tmp_path, PYPTO_DEVICE=named)
    with pytest.raises(LaunchEnvError, match=message):
        distributed.init_distributed()
    assert not torch.distributed.is_initialized()


@pytest.mark.parametrize("raw", ["nan", "inf", "-1", "0", "soon"])
def test_a_bad_comm_timeout_is_refused_naming_the_variable(monkeypatch, raw):
    monkeypatch.setenv("PYPTO_COMM_TIMEOUT_S", raw)
    with pytest.raises(LaunchEnvError, match=f"PYPTO_COMM_TIMEOUT_S='{raw}' is not a number of "
                                             "seconds in"):
        distributed._timeout()


def test_the_comm_timeout_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("PYPTO_COMM_TIMEOUT_S", "2.5")
    assert distributed._timeout().total_seconds() == 2.5
    monkeypatch.delenv("PYPTO_COMM_TIMEOUT_S")
    assert distributed._timeout().total_seconds() == distributed.DEFAULT_TIMEOUT_S


def test_broadcast_src_is_a_rank_in_the_group(monkeypatch, tmp_path, port):
    """vLLM's convention: src counts members of the group; anything else is refused."""
    _one_rank_env(monkeypatch, tmp_path, PYPTO_DEVICE="cpu", MASTER_ADDR="127.0.0.1",
                  MASTER_PORT=str(port))
    distributed.init_distributed()
    try:
        tp = distributed.get_tp_group()
        assert tp.broadcast(torch.tensor([7.0])).tolist() == [7.0]
        with pytest.raises(ValueError, match="tp broadcast src: 1 is not a rank in this group "
                                             r"of 1 \(0..0\); give the position in the group"):
            tp.broadcast(torch.tensor([7.0]), src=1)
    finally:
        distributed.destroy_distributed()
