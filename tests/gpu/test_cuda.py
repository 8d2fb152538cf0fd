"""CUDA through the real stack: `pypto launch` -> NCCL -> the executor on the GPU.

Skipped where no CUDA device is present (CI has none); run on a GPU machine with
`pytest tests/gpu`. World sizes follow the GPUs present (one process per GPU, NCCL's rule).
"""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

MODEL = {"num_layers": 2, "hidden_size": 64, "num_attention_heads": 8, "num_kv_heads": 4,
         "intermediate_size": 128, "num_experts": 4, "experts_per_token": 2, "vocab_size": 128}


def _config(tmp_path, parallel: dict) -> str:
    world = 1
    for key in ("data_parallel_size", "tensor_parallel_size", "pipeline_parallel_size"):
        world *= parallel.get(key, 1)
    path = tmp_path / "cuda.json"
    path.write_text(json.dumps({"parallel": parallel, "model": MODEL,
                                "cluster": {"platform": "cuda", "devices_per_node": world}}))
    return str(path)


def _layouts() -> list[dict]:
    n = torch.cuda.device_count()
    out = [{}]
    if n >= 2:
        out += [{"tensor_parallel_size": 2}, {"data_parallel_size": 2,
                                               "enable_expert_parallel": True}]
    if n >= 4:
        out += [{"pipeline_parallel_size": 2, "tensor_parallel_size": 2}]
    return out


@pytest.mark.parametrize("parallel", _layouts(), ids=lambda p: "-".join(
    f"{k.split('_')[0]}{v}" for k, v in p.items()) or "one-gpu")
@pytest.mark.parametrize("bind", ["local-rank", "mask"])
def test_runner_on_cuda_matches_the_cpu_reference(pypto_launch, repo_root, tmp_path, parallel,
                                                  bind):
    out = tmp_path / "out"
    out.mkdir()
    r = pypto_launch(["--config", _config(tmp_path, parallel), "--standalone",
                      "--device-bind", bind, str(repo_root / "tests/gpu/cuda_worker.py"),
                      str(out)], timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    results = [json.loads(p.read_text()) for p in sorted(out.glob("rank*.json"))]
    assert results
    for res in results:
        assert res["backend"] == "nccl" and res["device"].startswith("cuda")
        assert res["all_reduce"] == [float(len(results))] * 4
        assert res["max_rel_err"] <= 1e-4
        assert res["tokens"] == res["ref_tokens"] or not res["tokens"]
        if bind == "mask":
            assert res["device_count"] == 1 and res["device"] == "cuda:0"


def test_more_workers_than_gpus_is_refused_before_anything_starts(pypto_launch, repo_root,
                                                                  tmp_path):
    n = torch.cuda.device_count()
    r = pypto_launch(["--platform", "cuda", "--nproc-per-node", str(n + 1), "--standalone",
                      str(repo_root / "tests/gpu/cuda_worker.py"), str(tmp_path)], timeout=60)
    assert r.returncode == 2
    assert "--nproc-per-node" in r.stderr and "Traceback" not in r.stderr
