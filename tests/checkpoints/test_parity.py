"""Our model on a Hugging Face checkpoint equals transformers' forward on the same folder:
logits (fp32, max relative error <= 1e-4) and 32 greedy tokens, on one rank in this process
and under TP 2, PP 2 and EP over 2 (both placements) in one launched gloo job."""

from __future__ import annotations

import json

import pytest
import torch
from executor_jobs import HERE as EXECUTOR_TESTS
from executor_jobs import launch
from hf_models import ARCHS, MOE_ARCHS, PROMPTS, STEPS, hf_greedy, max_rel_err

from pypto_serving.core.loader import parse_config
from pypto_serving.core.topology import resolve_topology
from pypto_serving.executor import distributed
from pypto_serving.executor.generate import greedy_generate
from pypto_serving.executor.runner import ReferenceModelRunner

WORKER = EXECUTOR_TESTS.parent / "checkpoints" / "checkpoint_worker.py"
TOLERANCE = 1e-4


REVERSED = [list(reversed(p)) for p in PROMPTS]


@pytest.fixture(scope="module")
def hf_runs(hf_reference):
    """(arch, replica) -> transformers' (tokens, per-step logits) on that replica's prompts
    (replica 1 of a DP 2 layout gets the prompts reversed)."""
    return {(arch, dp): hf_greedy(model, prompts) for arch, model in hf_reference.items()
            for dp, prompts in enumerate((PROMPTS, REVERSED))}


@pytest.mark.parametrize("arch", ARCHS)
def test_one_rank_equals_transformers(arch, hf_checkpoints, hf_runs, one_rank_world):
    config = parse_config({"model": {"path": str(hf_checkpoints[arch])}})
    ctx = distributed.init_model_parallel(resolve_topology(config))
    runner = ReferenceModelRunner(ctx)
    runner.load_weights()
    runner.init_kv_cache(64)
    gen = greedy_generate(runner, PROMPTS, STEPS)
    want_tokens, want_logits = hf_runs[arch, 0]
    assert gen.tokens == want_tokens
    errors = [max_rel_err(got, want) for got, want in zip(gen.logits, want_logits, strict=True)]
    assert max(errors) <= TOLERANCE, errors


def _layout_cases(folders) -> list[dict]:
    two = [PROMPTS, REVERSED]
    cases = []
    for arch in ARCHS:
        layouts = {"tp2": {"tensor_parallel_size": 2}, "pp2": {"pipeline_parallel_size": 2}}
        if arch in MOE_ARCHS:
            layouts["ep-tp2"] = {"tensor_parallel_size": 2, "enable_expert_parallel": True}
            layouts["ep-dp2-rr"] = {"data_parallel_size": 2, "enable_expert_parallel": True,
                                    "expert_placement_strategy": "round_robin"}
        for name, parallel in layouts.items():
            cases.append({"name": f"{arch}-{name}", "arch": arch, "steps": STEPS,
                          "prompts": two if parallel.get("data_parallel_size") else [PROMPTS],
                          "config": {"parallel": parallel, "cluster": {"platform": "cpu"},
                                     "model": {"path": str(folders[arch])}}})
    return cases


@pytest.fixture(scope="module")
def layout_results(hf_checkpoints, tmp_path_factory):
    """{rank: {case: result}} of one world-2 job running every layout case."""
    work = tmp_path_factory.mktemp("layouts")
    cases = _layout_cases(hf_checkpoints)
    (work / "cases.json").write_text(json.dumps(cases))
    (work / "out").mkdir()
    proc = launch(cases[0]["config"], WORKER, [str(work / "cases.json"), str(work / "out")],
                  work, timeout=400)
    assert proc.returncode == 0, f"job failed ({proc.returncode}):\n{proc.stderr[-6000:]}"
    return cases, {int(p.stem[4:]): json.loads(p.read_text())
                   for p in (work / "out").glob("rank*.json")}


def test_tp_pp_ep_layouts_equal_transformers(layout_results, hf_runs):
    cases, by_rank = layout_results
    assert sorted(by_rank) == [0, 1]
    for case in cases:
        seen = set()
        for results in by_rank.values():
            res = results[case["name"]]
            if not res["is_last_stage"]:
                continue
            want_tokens, want_logits = hf_runs[case["arch"], res["dp"]]
            assert res["tokens"] == want_tokens, case["name"]
            errors = [max_rel_err(torch.tensor(got), want)
                      for got, want in zip(res["logits"], want_logits, strict=True)]
            assert max(errors) <= TOLERANCE, (case["name"], errors)
            seen.add(res["dp"])
        assert seen == set(range(len(case["prompts"]))), case["name"]


def test_each_rank_holds_only_its_shard(layout_results, hf_reference):
    """Under TP 2, PP 2 and EP over TP 2 each rank holds well under the model; under TP and
    PP the two halves add up to it, but for the replicated norms (EP also replicates the
    router and the shared expert)."""
    cases, by_rank = layout_results
    for case in cases:
        if "ep-dp2" in case["name"]:
            continue  # DP replicas each hold the attention in full
        full = sum(p.numel() for p in hf_reference[case["arch"]].parameters())
        if hf_reference[case["arch"]].config.tie_word_embeddings:
            full += hf_reference[case["arch"]].lm_head.weight.numel()  # we hold it twice
        sizes = [by_rank[r][case["name"]]["numel"] for r in (0, 1)]
        assert max(sizes) < 0.7 * full, (case["name"], sizes)
        if "ep" not in case["name"]:
            assert sum(sizes) <= full * 1.02, (case["name"], sizes)  # norms replicated
