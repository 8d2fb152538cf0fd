"""Worker of the executor tests: runs several layouts of one world size in one launched job.

Usage, as a launched script: layout_worker.py CASES.json OUT_DIR

The job's own config (PYPTO_CONFIG) is the first case; every later case re-creates the
groups of its own layout on the same world (init_model_parallel). For each case this rank
runs greedy prefill + decode through the sharded runner, runs the single-process reference
on the same prompts, and writes what it saw to OUT_DIR/rank{R}.json for the test to judge.
"""

from __future__ import annotations

import torch
from case_worker import run_cases
from expert_spy import ExpertSpy

from pypto_serving.core.topology import GroupUnavailableError
from pypto_serving.executor import distributed
from pypto_serving.executor.batch import PrefillBatch
from pypto_serving.executor.ep import expert_modules
from pypto_serving.executor.generate import greedy_generate, reference_generate
from pypto_serving.executor.model import build_reference_model
from pypto_serving.executor.runner import ReferenceModelRunner


def _refusal(call) -> str | None:
    try:
        call()
    except RuntimeError as e:
        return str(e)
    return None


def run_case(case: dict, ctx) -> dict:
    info = ctx.rank_info
    replica = info.dp
    prompts = case["prompts"][replica]
    steps = case["steps"][replica]
    runner = ReferenceModelRunner(ctx, seed=case.get("seed", 0))
    # the runner contract in use: the order of calls is enforced, the cache is the runner's
    contract = {"forward_before_weights": _refusal(lambda: runner.forward(None, None))}
    if case.get("weights_seed") is not None:  # a full state dict handed in, sharded here
        full = build_reference_model(ctx.model, seed=case["weights_seed"]).state_dict()
        runner.load_weights(full)
    else:
        runner.load_weights()
    contract["prefill_before_cache"] = _refusal(
        lambda: runner.run_prefill(PrefillBatch([[1]], [[0]])))
    cache = runner.init_kv_cache(case.get("num_blocks", 32))
    contract["cache_is_the_runners"] = runner.kv_cache is cache
    distributed.reset_comm_stats()
    runner.warmup()  # a dummy step on every rank: joins the collectives, writes no KV
    contract["warmup_comm"] = distributed.comm_stats()
    contract["warmup_wrote_kv"] = bool(cache.k.any() or cache.v.any())
    spy = ExpertSpy(expert_modules(runner.model)) if case.get("trace") else None
    comm: list[dict] = []

    def on_step(_i, _out):
        comm.append(distributed.comm_stats())
        distributed.reset_comm_stats()

    distributed.reset_comm_stats()
    gen = greedy_generate(runner, prompts, steps, on_step=on_step)
    contract["generate_wrote_kv"] = bool(cache.k.any() and cache.v.any())
    traces = []
    if spy is not None:
        spy.close()
        traces = spy.records

    result = {
        "rank": info.rank, "dp": info.dp, "pp": info.pp, "tp": info.tp, "ep": info.ep,
        "layers": list(info.layers), "experts": list(info.experts),
        "is_last_stage": info.is_last_stage,
        "kv_cache_shape": list(cache.k.shape),
        "tokens": gen.tokens, "step_tokens": gen.step_tokens, "dummy_steps": gen.dummy_steps,
        "comm": comm, "trace": traces, "contract": contract,
        "groups": {k: list(distributed.get_group(k).ranks) for k in ("tp", "pp", "dp", "world")},
        "ep_group": list(ctx.ep.ranks) if ctx.ep else None,
    }
    try:
        distributed.get_ep_group()
        result["ep_error"] = None
    except GroupUnavailableError as e:
        result["ep_error"] = str(e)
    if info.is_last_stage and prompts:
        ref_model = build_reference_model(ctx.model, seed=case.get("ref_seed", 0))
        ref = reference_generate(ref_model, prompts, steps)
        result["ref_tokens"] = ref.tokens
        result["max_rel_err"] = [
            float((got.cpu() - want.cpu()).abs().max() / want.abs().max())
            for got, want in zip(gen.logits, ref.logits, strict=True)
        ]
    return result


def check_collectives(ctx) -> dict:
    """Every helper of every group, on values that name their sender; stats per group."""
    distributed.reset_comm_stats()
    out = {}
    for kind in ("tp", "pp", "dp", "ep", "world"):
        g = distributed.get_group(kind) if kind != "ep" or ctx.ep else None
        if g is None:
            continue
        me = float(ctx.rank)
        rec = {
            "ranks": list(g.ranks), "rank_in_group": g.rank_in_group,
            "world_size": g.world_size, "is_first_rank": g.is_first_rank,
            "is_last_rank": g.is_last_rank, "prev_rank": g.prev_rank, "next_rank": g.next_rank,
            "all_reduce": g.all_reduce(torch.tensor([me])).tolist(),
            "all_gather": g.all_gather(torch.tensor([me])).tolist(),
            "reduce_scatter": g.reduce_scatter(
                torch.arange(g.world_size, dtype=torch.float32) + me).tolist(),
            "all_to_all": g.all_to_all(torch.full((g.world_size,), me)).tolist(),
            # member i sends i+1 rows to every member: variable sizes, exchanged first
            "all_to_all_v": g.all_to_all(
                torch.full(((g.rank_in_group + 1) * g.world_size,), me),
                [g.rank_in_group + 1] * g.world_size).tolist(),
            "broadcast": g.broadcast(torch.tensor([me]), src=g.world_size - 1).tolist(),
            "broadcast_first": g.broadcast(torch.tensor([me])).tolist(),
        }
        if g.next_rank is not None:
            g.send(torch.tensor([me]))
        if g.prev_rank is not None:
            rec["recv"] = g.recv((1,), torch.float32).tolist()
        out[kind] = rec
    out["stats"] = distributed.comm_stats()
    return out


def run_case_and_collectives(case: dict, ctx) -> dict:
    result = run_case(case, ctx)
    if case.get("collectives"):
        result["collectives"] = check_collectives(ctx)
    return result


if __name__ == "__main__":
    run_cases(run_case_and_collectives)
