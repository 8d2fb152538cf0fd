"""`pypto model make-tiny` writes a checkpoint transformers itself loads (no missing or
unexpected weight) and whose logits and greedy tokens our model reproduces; one seed, one
set of bytes."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import pytest
import torch
from hf_models import ARCHS, PROMPTS, STEPS, hf_greedy, max_rel_err

from pypto_serving.core.loader import parse_config
from pypto_serving.core.topology import resolve_topology
from pypto_serving.executor import distributed
from pypto_serving.executor.generate import greedy_generate
from pypto_serving.executor.runner import ReferenceModelRunner


def _make_tiny(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pypto_serving.cli.entry", "model",
                           "make-tiny", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("arch", ARCHS)
def test_make_tiny_loads_in_transformers_and_matches(arch, tmp_path, one_rank_world):
    from transformers import AutoModelForCausalLM

    folder = tmp_path / arch
    proc = _make_tiny("--arch", arch, "-o", str(folder))
    assert proc.returncode == 0, proc.stderr
    ref, info = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32,
                                                     output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    want_tokens, want_logits = hf_greedy(ref.eval(), PROMPTS)
    ctx = distributed.init_model_parallel(resolve_topology(
        parse_config({"model": {"path": str(folder)}})))
    runner = ReferenceModelRunner(ctx)
    runner.load_weights()
    runner.init_kv_cache(64)
    gen = greedy_generate(runner, PROMPTS, STEPS)
    assert gen.tokens == want_tokens
    assert max(max_rel_err(g, w) for g, w in zip(gen.logits, want_logits, strict=True)) <= 1e-4


def test_same_seed_same_bytes_and_bad_arguments(tmp_path):
    digests = []
    for name in ("a", "b"):
        assert _make_tiny("--arch", "qwen2", "-o", str(tmp_path / name)).returncode == 0
        digests.append(hashlib.sha256((tmp_path / name / "model.safetensors").read_bytes())
                       .hexdigest())
    assert digests[0] == digests[1]
    other = _make_tiny("--arch", "qwen2", "--seed", "1", "-o", str(tmp_path / "c"))
    assert other.returncode == 0
    assert (tmp_path / "c" / "model.safetensors").read_bytes() != (
        tmp_path / "a" / "model.safetensors").read_bytes()
    bad = _make_tiny("--arch", "gpt2", "-o", str(tmp_path / "d"))
    assert bad.returncode == 2 and "llama, qwen2, mixtral, qwen2-moe" in bad.stderr
    taken = _make_tiny("--arch", "llama", "-o", str(tmp_path / "a"))
    assert taken.returncode == 2 and "not an empty folder" in taken.stderr
    assert "Traceback" not in bad.stderr + taken.stderr
