"""The GPU step's Triton kernels (paged decode and prefill attention, RMSNorm, rotary,
SiLU-and-mul, the GEMVs, the argmax) equal
their torch versions, run here on the CPU by Triton's interpreter (tests/gpu runs them on a
GPU). The attention cases cover grouped and ungrouped heads, a group of 3, context lengths
that end inside, at and past a block, block tables in shuffled order and fp16 (bf16 on the
GPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

CHECK = Path(__file__).with_name("kernel_check.py")
TOLERANCE = {"float32": 1e-5, "float16": 0.004, "int64": 0}  # fp16: one rounding of ~2


def run_kernel_check(device: str) -> list[dict]:
    env = {**os.environ, "TRITON_INTERPRET": "1"} if device == "cpu" else dict(os.environ)
    r = subprocess.run([sys.executable, str(CHECK), device], capture_output=True, text=True,
                       timeout=240, env=env)
    assert r.returncode == 0, r.stderr
    return [json.loads(line) for line in r.stdout.splitlines()]


def test_every_kernel_equals_its_torch_version_in_the_interpreter():
    cases = run_kernel_check("cpu")
    assert len(cases) == 28
    for case in cases:
        dtype = case["dtype"].removeprefix("torch.")
        assert case["max_abs_err"] <= TOLERANCE[dtype], case
