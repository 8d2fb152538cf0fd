"""Fixtures of the checkpoint tests: tiny transformers-built checkpoints of each architecture,
saved once per session (Mixtral's in several shards with a model.safetensors.index.json)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from hf_models import ARCHS, save_hf_checkpoint


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """transformers and our in-process model on one intra-op thread while a module runs: on the
    shared 2-core host a second OpenMP thread waits on a busy core (seen: one-rank parity
    steps 0.2 s alone, 10-40 s next to another job)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def hf_checkpoints(tmp_path_factory) -> dict[str, Path]:
    """arch -> folder (config.json, safetensors, tokenizer files)."""
    root = tmp_path_factory.mktemp("hf")
    folders = {}
    for arch in ARCHS:
        folders[arch] = root / arch
        save_hf_checkpoint(arch, folders[arch],
                           max_shard_size="200KB" if arch == "mixtral" else None)
    return folders


@pytest.fixture(scope="session")
def hf_reference(hf_checkpoints):
    """arch -> the transformers model loaded back with from_pretrained (fp32, eval)."""
    import torch
    from transformers import AutoModelForCausalLM

    return {arch: AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
            for arch, folder in hf_checkpoints.items()}


@pytest.fixture(scope="session")
def one_rank_world():
    """A gloo world of one rank in this process (the layout of one rank needs no launch)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    import torch.distributed as dist

    from pypto_serving.executor import distributed

    dist.init_process_group("gloo", rank=0, world_size=1, init_method=f"tcp://127.0.0.1:{port}")
    yield
    distributed.destroy_distributed()
    if dist.is_initialized():
        dist.destroy_process_group()
