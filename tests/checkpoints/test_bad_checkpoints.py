"""A bad checkpoint is one clear error (exit 2, no traceback) from `pypto launch --model`,
found before any worker is spawned: the worker script, had it run, would leave a file; and
from `pypto serve --model`, before any replica starts."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from executor_jobs import ROOT, run_pypto_launch
from safetensors.torch import load_file, save_file


def _drop_tensor(folder: Path) -> None:
    weights = load_file(folder / "model.safetensors")
    del weights["model.layers.2.mlp.up_proj.weight"]
    save_file(weights, folder / "model.safetensors")


def _wrong_shape(folder: Path) -> None:
    weights = load_file(folder / "model.safetensors")
    weights["model.layers.1.self_attn.k_proj.weight"] = weights[
        "model.layers.1.self_attn.k_proj.weight"][:16].clone()
    save_file(weights, folder / "model.safetensors")


def _integer_weights(folder: Path) -> None:
    weights = load_file(folder / "model.safetensors")
    name = "model.layers.0.self_attn.q_proj.weight"
    weights[name] = (weights[name] * 100).to(torch.int32)
    save_file(weights, folder / "model.safetensors")


def _unsupported(folder: Path) -> None:
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "architectures": ["GPT2LMHeadModel"]}))


def _corrupt_header(folder: Path) -> None:
    data = bytearray((folder / "model.safetensors").read_bytes())
    data[8:40] = b"\xff" * 32  # the JSON header's first bytes
    (folder / "model.safetensors").write_bytes(bytes(data))


def _no_tokenizer(folder: Path) -> None:
    (folder / "tokenizer.json").unlink()


CASES = {
    "missing tensor": (_drop_tensor, "tensor model.layers.2.mlp.up_proj.weight missing"),
    "wrong shape": (_wrong_shape, "model.layers.1.self_attn.k_proj.weight has shape [16, 64], "
                                  "config.json implies [32, 64]"),
    "integer weights": (_integer_weights, "model.layers.0.self_attn.q_proj.weight is stored as "
                                          "I32; weights must be one of F32, F16, BF16, F64"),
    "unsupported architecture": (_unsupported, "architecture 'GPT2LMHeadModel' is not "
                                               "supported; supported: LlamaForCausalLM, "
                                               "Qwen2ForCausalLM, MixtralForCausalLM, "
                                               "Qwen2MoeForCausalLM"),
    "corrupt header": (_corrupt_header, "model.safetensors is not a readable safetensors file"),
    "missing tokenizer": (_no_tokenizer, "has no tokenizer.json"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_checkpoint_is_one_clear_error_before_any_worker(case, hf_checkpoints, tmp_path):
    spoil, message = CASES[case]
    folder = tmp_path / "model"
    shutil.copytree(hf_checkpoints["qwen2"], folder)
    spoil(folder)
    marker = tmp_path / "worker-ran"
    script = tmp_path / "worker.py"
    script.write_text(f"open({str(marker)!r}, 'w').close()\n")
    proc = run_pypto_launch(["--standalone", "--platform", "cpu", "-tp", "2", "--model",
                             str(folder), str(script)], timeout=60, cwd=ROOT)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    problems = [line for line in proc.stderr.splitlines() if line.startswith("  - ")]
    assert len(problems) == 1 and "model.path=" in problems[0], proc.stderr
    assert message in problems[0], proc.stderr
    assert not marker.exists()


@pytest.mark.parametrize("case", ["missing tokenizer", "corrupt header"])
def test_serve_refuses_a_bad_checkpoint_before_starting(case, hf_checkpoints, tmp_path):
    spoil, message = CASES[case]
    folder = tmp_path / "model"
    shutil.copytree(hf_checkpoints["qwen2"], folder)
    spoil(folder)
    proc = subprocess.run([sys.executable, "-m", "pypto_serving.cli.entry", "serve", "--model",
                           str(folder), "--platform", "cpu", "--port", "0"],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert message in proc.stderr and "replica" not in proc.stdout + proc.stderr
