"""Our model on a Hugging Face checkpoint equals transformers' forward on the same folder:
logits (fp32, max relative error <= 1e-4) and 32 greedy tokens, on one rank in this process,
under TP 2, PP 2 and EP over 2 (both placements) in one launched gloo job of 2 ranks, and
under EP over 4 (both placements, over DP 2 x TP 2 and over DP 4) in one job of 4 ranks."""

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


def _case(arch: str, name: str, parallel: dict, folders) -> dict:
    replicas = parallel.get("data_parallel_size", 1)
    return {"name": f"{arch}-{name}", "arch": arch, "steps": STEPS,
            "prompts": [(PROMPTS, REVERSED)[dp % 2] for dp in range(replicas)],
            "config": {"parallel": parallel, "cluster": {"platform": "cpu"},
                       "model": {"path": str(folders[arch])}}}


def _layout_cases(folders) -> list[dict]:
    """World 2: TP 2 and PP 2 of every architecture; EP 2 (over TP 2, linear; over DP 2,
    round robin) of the MoE ones."""
    cases = []
    for arch in ARCHS:
        layouts = {"tp2": {"tensor_parallel_size": 2}, "pp2": {"pipeline_parallel_size": 2}}
        if arch in MOE_ARCHS:
            layouts["ep-tp2"] = {"tensor_parallel_size": 2, "enable_expert_parallel": True}
            layouts["ep-dp2-rr"] = {"data_parallel_size": 2, "enable_expert_parallel": True,
                                    "expert_placement_strategy": "round_robin"}
        cases += [_case(arch, name, parallel, folders) for name, parallel in layouts.items()]
    return cases


def _ep4_cases(folders) -> list[dict]:
    """World 4, the MoE architectures: EP 4 over DP 2 x TP 2 and over DP 4, each placement
    once per architecture and once per shape."""
    shapes = {"dp2-tp2": {"data_parallel_size": 2, "tensor_parallel_size": 2},
              "dp4": {"data_parallel_size": 4}}
    plan = {"mixtral": (("dp2-tp2", "linear"), ("dp4", "round_robin")),
            "qwen2-moe": (("dp2-tp2", "round_robin"), ("dp4", "linear"))}
    return [_case(arch, f"ep4-{shape}-{strategy}", {
        **shapes[shape], "enable_expert_parallel": True, "expert_placement_strategy": strategy},
        folders) for arch in MOE_ARCHS for shape, strategy in plan[arch]]


def _run_cases(cases: list[dict], work) -> dict[int, dict]:
    """{rank: {case: result}} of one launched job running `cases` (one world size)."""
    (work / "cases.json").write_text(json.dumps(cases))
    (work / "out").mkdir()
    proc = launch(cases[0]["config"], WORKER, [str(work / "cases.json"), str(work / "out")],
                  work, timeout=400)
    assert proc.returncode == 0, f"job failed ({proc.returncode}):\n{proc.stderr[-6000:]}"
    return {int(p.stem[4:]): json.loads(p.read_text())
            for p in (work / "out").glob("rank*.json")}


@pytest.fixture(scope="module")
def layout_results(hf_checkpoints, tmp_path_factory):
    """(cases, {rank: {case: result}}) of one world-2 job running every world-2 case."""
    cases = _layout_cases(hf_checkpoints)
    return cases, _run_cases(cases, tmp_path_factory.mktemp("layouts"))


@pytest.fixture(scope="module")
def ep4_results(hf_checkpoints, tmp_path_factory):
    """(cases, {rank: {case: result}}) of one world-4 job running the EP 4 cases."""
    cases = _ep4_cases(hf_checkpoints)
    return cases, _run_cases(cases, tmp_path_factory.mktemp("ep4"))


def _assert_equal_transformers(cases, by_rank, hf_runs) -> None:
    """Every replica's last stage of every case produced transformers' tokens and logits."""
    for case in cases:
        seen = set()
        for results in by_rank.values():
            res = results[case["name"]]
            if not res["is_last_stage"]:
                continue
            want_tokens, want_logits = hf_runs[case["arch"], res["dp"] % 2]
            assert res["tokens"] == want_tokens, (case["name"], res["dp"])
            errors = [max_rel_err(torch.tensor(got), want)
                      for got, want in zip(res["logits"], want_logits, strict=True)]
            assert max(errors) <= TOLERANCE, (case["name"], errors)
            seen.add(res["dp"])
        assert seen == set(range(len(case["prompts"]))), case["name"]


HELD_EXPERTS = {
    2: {"linear": [[0, 1, 2], [3, 4, 5]], "round_robin": [[0, 2, 4], [1, 3, 5]]},
    4: {"linear": [[0, 1], [2, 3], [4], [5]], "round_robin": [[0, 4], [1, 5], [2], [3]]},
}
"""EP size -> placement -> the experts each EP rank must hold (6 experts)."""


def _assert_held_experts(cases, by_rank, ep_size: int) -> None:
    """Each EP rank of each EP case loaded exactly its placement's experts, in every layer."""
    for case in cases:
        parallel = case["config"]["parallel"]
        if not parallel.get("enable_expert_parallel"):
            continue
        want = HELD_EXPERTS[ep_size][parallel.get("expert_placement_strategy", "linear")]
        for results in by_rank.values():
            res = results[case["name"]]
            held = want[res["ep_rank"]]
            assert res["experts"] == {str(layer): held for layer in range(4)}, case["name"]


def test_tp_pp_ep_layouts_equal_transformers(layout_results, hf_runs):
    """TP 2, PP 2, EP 2 (linear over TP 2, round robin over DP 2): tokens and logits equal
    transformers', and each EP rank loaded exactly its experts."""
    cases, by_rank = layout_results
    assert sorted(by_rank) == [0, 1]
    _assert_equal_transformers(cases, by_rank, hf_runs)
    _assert_held_experts(cases, by_rank, ep_size=2)


def test_ep4_both_placements_equal_transformers(ep4_results, hf_runs):
    """EP over 4 ranks: tokens and logits equal transformers', and each rank loaded exactly
    the experts its placement gives it (linear [0,1] [2,3] [4] [5], round robin [0,4] [1,5]
    [2] [3]) in every layer."""
    cases, by_rank = ep4_results
    assert sorted(by_rank) == [0, 1, 2, 3]
    _assert_equal_transformers(cases, by_rank, hf_runs)
    _assert_held_experts(cases, by_rank, ep_size=4)


def test_each_rank_holds_only_its_shard(layout_results, hf_reference):
    """Under TP 2, PP 2 and EP over TP 2 each rank holds well under the model; under TP and
    PP the two halves add up to it, but for the replicated norms (EP also replicates the
    router and the shared expert). No layout's load imported sympy or torch._dynamo (what
    building on the meta device with torch's Python kernels costs: ~75 MiB per rank)."""
    cases, by_rank = layout_results
    for case in cases:
        for rank, results in by_rank.items():  # loading ran no Python meta kernel
            assert results[case["name"]]["heavy_imports"] == [], (case["name"], rank)
        if "ep-dp2" in case["name"]:
            continue  # DP replicas each hold the attention in full
        full = sum(p.numel() for p in hf_reference[case["arch"]].parameters())
        if hf_reference[case["arch"]].config.tie_word_embeddings:
            full += hf_reference[case["arch"]].lm_head.weight.numel()  # we hold it twice
        sizes = [by_rank[r][case["name"]]["numel"] for r in (0, 1)]
        assert max(sizes) < 0.7 * full, (case["name"], sizes)
        if "ep" not in case["name"]:
            assert sum(sizes) <= full * 1.02, (case["name"], sizes)  # norms replicated
