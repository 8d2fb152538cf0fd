"""Worker of the engine tests: the real Engine on each replica leader over ReplicaExecutor,
the other ranks following, for several layouts of one world size in one launched job.

Usage, as a launched script: engine_worker.py CASES.json OUT_DIR

For each case the leader serves a stream of requests whose arrivals are staggered (forward
and reversed order, so batch mixes differ), with a small token budget so that prefill
chunks and decodes share steps; then each seeded request again alone. The other ranks run
`follow()`. Under DP + EP the leaders step in lock-step (must_step) and an idle one runs
dummy steps. Each rank writes OUT_DIR/rank{R}.json for the test to judge.
"""

from __future__ import annotations

from case_worker import run_cases

from pypto_serving.core.memory import kv_bytes_per_token, weight_bytes
from pypto_serving.engine.engine import Engine
from pypto_serving.engine.sampling_params import SamplingParams
from pypto_serving.engine.tokenizer import ByteTokenizer
from pypto_serving.executor import distributed
from pypto_serving.executor.generate import reference_generate
from pypto_serving.executor.kv_budget import replica_kv_pool
from pypto_serving.executor.model import build_reference_model
from pypto_serving.executor.replica import ReplicaExecutor, follow
from pypto_serving.executor.runner import ReferenceModelRunner


class RecordingExecutor:
    """The StepExecutor the engine drives, recording each plan's mix of chunks."""

    def __init__(self, inner: ReplicaExecutor):
        self.inner = inner
        self.mixes: list[tuple[int, int]] = []  # (prefill chunks, decodes) per real step
        self.dummy_steps = 0

    def execute(self, plan):
        if plan.is_dummy:
            self.dummy_steps += 1
        else:
            decodes = sum(1 for c in plan.chunks if len(c.token_ids) == 1 and c.start_pos > 0
                          and c.output_index > 0)
            self.mixes.append((len(plan.chunks) - decodes, decodes))
        return self.inner.execute(plan)

    def must_step(self, has_work: bool) -> bool:
        return self.inner.must_step(has_work)

    def close(self) -> None:
        self.inner.close()


def serve(executor, pool, ctx, requests) -> dict[str, list[int]]:
    """Run `requests` (rid, prompt, SamplingParams, arrival turn) to the end; tokens by rid.
    Every leader of a lock-stepped layout calls this the same number of times."""
    cfg = ctx.config.serve
    engine = Engine(executor, num_blocks=pool.num_blocks, block_size=pool.block_size,
                    max_num_seqs=cfg.max_num_seqs,
                    max_num_batched_tokens=cfg.max_num_batched_tokens,
                    max_model_len=ctx.model.max_seq_len, tokenizer=ByteTokenizer())
    tokens: dict[str, list[int]] = {rid: [] for rid, *_ in requests}
    pending = sorted(requests, key=lambda r: r[3])
    turn = 0
    while True:
        while pending and pending[0][3] <= turn:
            rid, prompt, params, _ = pending.pop(0)
            engine.add_request(rid, prompt, params)
        if not executor.must_step(engine.has_work or bool(pending)):
            break
        for out in engine.step():
            tokens[out.rid].extend(out.token_ids)
        turn += 1
    return tokens


def run_case(case: dict, ctx) -> dict:
    info, spec = ctx.rank_info, ctx.model
    runner = ReferenceModelRunner(ctx)
    runner.load_weights()
    pool = replica_kv_pool(ctx, distributed.get_cpu_group("replica"))
    runner.init_kv_cache(pool.num_blocks)
    result = {
        "rank": info.rank, "dp": info.dp, "leader": ctx.is_replica_leader,
        "weight_bytes": sum(p.numel() * p.element_size() for p in runner.model.parameters()),
        "weight_formula": weight_bytes(info, spec, ctx.expert_parallel),
        "kv_bytes": 2 * runner.kv_cache.k.numel() * runner.kv_cache.k.element_size(),
        "kv_formula": kv_bytes_per_token(info, spec) * pool.num_tokens,
        "num_blocks": pool.num_blocks,
    }
    if not ctx.is_replica_leader:
        result["followed_steps"] = follow(ctx, runner)
        return result
    executor = RecordingExecutor(ReplicaExecutor(ctx, runner))
    mine = case["requests"][info.dp]
    greedy = [(r["rid"], r["prompt"], SamplingParams(max_tokens=r["max_tokens"],
                                                     ignore_eos=True), r["arrival"])
              for r in mine if "seed" not in r]
    seeded = [(r["rid"], r["prompt"], SamplingParams(
        max_tokens=r["max_tokens"], temperature=0.9, top_k=r.get("top_k", 0),
        top_p=r.get("top_p", 1.0), seed=r["seed"], ignore_eos=True), r["arrival"])
        for r in mine if "seed" in r]
    everything = greedy + seeded
    last = max(r[3] for r in everything)
    forward = serve(executor, pool, ctx, everything)
    backward = serve(executor, pool, ctx,
                     [(rid, p, sp, last - t) for rid, p, sp, t in everything])
    alone = {rid: serve(executor, pool, ctx, [(rid, p, sp, 0)])[rid]
             for rid, p, sp, _ in seeded}
    executor.close()
    ref_model = build_reference_model(spec)
    result.update({
        "forward": forward, "backward": backward, "seeded_alone": alone,
        "reference": {rid: reference_generate(ref_model, [p], sp.max_tokens).tokens[0]
                      for rid, p, sp, _ in everything},
        "greedy": [r[0] for r in greedy], "seeded": [r[0] for r in seeded],
        "mixes": executor.mixes, "dummy_steps": executor.dummy_steps,
        "handover": executor.inner.handover.to_dict(),
    })
    return result


if __name__ == "__main__":
    run_cases(run_case)
