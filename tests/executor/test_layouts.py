"""Every layout gives the reference model's numbers, moves the bytes it should, and routes
every token to its experts exactly once. Real worker processes, gloo, one job per world size.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import executor_cases as cases
import executor_jobs as jobs
import pytest

from pypto_serving.core.comm_bytes import (
    ep_group_bytes,
    pp_rank_bytes,
    table_dict,
    tp_rank_bytes,
)
from pypto_serving.core.loader import parse_config
from pypto_serving.core.placement import split_evenly
from pypto_serving.core.topology import resolve_topology

HERE = Path(__file__).parent

pytestmark = pytest.mark.timeout(240)

BY_NAME = {c["name"]: c for c in cases.WORLD2 + cases.WORLD4}
ALL = [c for c in BY_NAME.values() if c["ref_seed"] == c.get("weights_seed", 0)]
TOL = 1e-4


@pytest.fixture(scope="module")
def results() -> dict[str, dict[int, dict]]:
    """Both jobs (world 2, then world 4), each run once per session; results[case][rank]."""
    out: dict[str, dict[int, dict]] = {}
    for world_cases in (cases.WORLD2, cases.WORLD4):
        by_rank = jobs.shared_layout_job(world_cases)
        for rank, per_case in by_rank.items():
            for name, res in per_case.items():
                out.setdefault(name, {})[rank] = res
    return out


def _topology(name: str):
    return resolve_topology(parse_config(BY_NAME[name]["config"]))


@pytest.mark.parametrize("name", [c["name"] for c in ALL])
def test_layout_matches_single_process_reference(results, name):
    case, ranks = BY_NAME[name], results[name]
    assert len(ranks) == _topology(name).world_size
    checked = 0
    for rank, res in ranks.items():
        want_steps = case["steps"][res["dp"]]
        assert len(res["tokens"][0]) == want_steps
        if not res["is_last_stage"]:
            continue
        assert res["tokens"] == res["ref_tokens"], f"rank {rank}: greedy tokens differ"
        assert len(res["max_rel_err"]) == want_steps  # prefill + decode steps
        assert max(res["max_rel_err"]) <= TOL, f"rank {rank}: {res['max_rel_err']}"
        checked += 1
    assert checked >= 1
    # every rank of a replica (all stages, all TP ranks) agrees on the generated tokens
    by_replica: dict[int, list] = {}
    for res in ranks.values():
        by_replica.setdefault(res["dp"], []).append(res["tokens"])
    for replica, seen in by_replica.items():
        assert all(t == seen[0] for t in seen), f"replica {replica} ranks disagree"


def test_reference_check_can_fail(results):
    """A model with other weights differs from the reference: the check above is live."""
    res = results["tp2-dense-wrong-reference"][0]
    assert max(res["max_rel_err"]) > 1e-2
    assert res["tokens"] != res["ref_tokens"]


@pytest.mark.parametrize("name", [c["name"] for c in ALL])
def test_groups_and_shards_come_from_core(results, name):
    topo = _topology(name)
    spec = topo.config.model
    for rank, res in results[name].items():
        info = topo.rank_info(rank)
        for kind in ("tp", "pp", "dp", "world"):
            assert res["groups"][kind] == list(topo.group(kind, rank).ranks)
        assert res["ep_group"] == (list(topo.group("ep", rank).ranks)
                                   if topo.expert_placement else None)
        assert res["layers"] == list(info.layers)
        assert res["experts"] == list(info.experts)
        assert res["kv_cache_shape"] == [len(info.kv_cache.layers), 32, 4,
                                         len(info.kv_cache.kv_heads), spec.head_dim]


def test_ep_group_is_unavailable_on_a_dense_model(results):
    res = results["tp2-dense"][0]
    assert res["ep_error"] == "this layout has no EP group: model 'tiny-dense' is dense"
    res = results["tp2-moe-sharded-experts"][0]
    assert res["ep_error"] == ("this layout has no EP group: "
                               "parallel.enable_expert_parallel is false")


def _tp_names():
    return [c["name"] for c in ALL if c["config"]["parallel"]["tensor_parallel_size"] > 1]


def _tp_step_comm(topo, rank: int, tokens: int, seqs: int) -> dict:
    """TP traffic of one step of `tokens` tokens over `seqs` sequences (formulas below)."""
    hidden, tp_size = topo.config.model.hidden_size, topo.layout.tp
    shard = max(len(s) for s in split_evenly(topo.config.model.vocab_size, tp_size))
    ep = topo.expert_placement is not None
    info = topo.rank_info(rank)
    layers = len(info.layers)
    n_reduce = (1 if ep else 2) * layers + info.is_first_stage
    want = {"all_reduce": {"calls": n_reduce, "bytes": n_reduce * tokens * hidden * 4}}
    gather = {"calls": 0, "bytes": 0}
    if ep:
        slice_rows = -(-tokens // tp_size)
        gather = {"calls": layers, "bytes": layers * slice_rows * hidden * 4}
    if info.is_last_stage and seqs:  # a step that samples nothing runs no LM head
        gather = {"calls": gather["calls"] + 1, "bytes": gather["bytes"] + seqs * shard * 4}
    if gather["calls"]:
        want["all_gather"] = gather
    return want


@pytest.mark.parametrize("name", _tp_names())
def test_tp_bytes_match_the_layout(results, name):
    """Per step: 2 all_reduces per layer (attention out, MLP/MoE out) + 1 for the embedding,
    each tokens x hidden x 4 bytes; the logits all_gather is seqs x largest vocab shard x 4.
    Under EP a MoE layer's output is instead one all_gather of this rank's token slice,
    padded to ceil(tokens / TP) rows: ceil(tokens / TP) x hidden x 4 bytes. The counted
    bytes equal core.comm_bytes (what `pypto simulate` prices), checked here by hand too."""
    topo = _topology(name)
    for rank, res in results[name].items():
        seqs = len(res["tokens"])
        for tokens, comm in zip(res["step_tokens"], res["comm"], strict=True):
            assert comm["tp"] == _tp_step_comm(topo, rank, tokens, seqs)
            assert comm["tp"] == table_dict(tp_rank_bytes(topo, res["pp"], tokens, seqs))


@pytest.mark.parametrize("name", [c["name"] for c in ALL])
def test_the_runner_contract_holds_on_every_rank(results, name):
    """Calls out of order are refused, the cache handed out is the one the runner fills, and
    warmup is a real one-token dummy step (its TP traffic, its activation through the stages;
    it samples nothing, so no LM head and no tokens back) that writes no KV."""
    topo = _topology(name)
    for rank, res in results[name].items():
        contract = res["contract"]
        assert contract["forward_before_weights"] == ("call load_weights() before running "
                                                      "the model")
        assert contract["prefill_before_cache"] == ("call init_kv_cache() before "
                                                    "run_prefill/run_decode")
        assert contract["cache_is_the_runners"] is True
        assert contract["warmup_wrote_kv"] is False
        assert contract["generate_wrote_kv"] is True
        warmup = contract["warmup_comm"]
        assert warmup["dp"] == {} and warmup["world"] == {}
        if topo.layout.tp > 1:
            assert warmup["tp"] == _tp_step_comm(topo, rank, tokens=1, seqs=0)
        if topo.layout.pp > 1:
            info = topo.rank_info(rank)
            hop = {"calls": 1, "bytes": topo.config.model.hidden_size * 4}
            want = {**({} if info.is_first_stage else {"recv": hop}),
                    **({} if info.is_last_stage else {"send": hop})}
            assert warmup["pp"] == want


@pytest.mark.parametrize("name", [c["name"] for c in ALL
                                  if c["config"]["parallel"]["pipeline_parallel_size"] > 1])
def test_pp_bytes_match_the_layout(results, name):
    """Each stage boundary carries tokens x hidden x 4 bytes; tokens come back as int64."""
    topo = _topology(name)
    hidden = topo.config.model.hidden_size
    for res in results[name].values():
        seqs = len(res["tokens"])
        for tokens, comm in zip(res["step_tokens"], res["comm"], strict=True):
            pp = comm["pp"]
            assert pp == table_dict(pp_rank_bytes(topo, res["pp"], tokens, seqs))
            act = {"calls": 1, "bytes": tokens * hidden * 4}
            assert pp.get("send") == (None if res["is_last_stage"] else act)
            assert pp.get("recv") == (None if res["pp"] == 0 else act)
            assert pp["broadcast"] == {"calls": 1, "bytes": seqs * 8}


def _ep_names(backend: str):
    return [c["name"] for c in ALL if c["config"]["parallel"]["enable_expert_parallel"]
            and c["config"]["parallel"].get("all2all_backend", "pypto_default") == backend]


def _both_busy_steps(case) -> int:
    return min(case["steps"])


def _ep_groups(topo):
    return list(topo.groups("ep"))


def _replica_tokens(ranks: dict[int, dict], group, step: int) -> list[int]:
    """Each replica's step tokens, as the EP group's members saw them (by DP index)."""
    by_dp = {ranks[r]["dp"]: ranks[r]["step_tokens"][step] for r in group.ranks}
    return [by_dp[d] for d in sorted(by_dp)]


@pytest.mark.parametrize("name", _ep_names("pypto_default"))
def test_ep_all_to_all_bytes_match_the_layout(results, name):
    """Summed over an EP group, per MoE layer: split sizes (n x n int64), the dispatched rows
    (tokens x k x (hidden x 4 + 16 bytes of expert id and token index)), the rows back."""
    topo, case = _topology(name), BY_NAME[name]
    m = topo.config.model
    for group in _ep_groups(topo):
        members = [results[name][r] for r in group.ranks]
        layers = len(members[0]["layers"])
        n = group.size
        for step in range(_both_busy_steps(case)):
            total = sum(res["comm"][step]["ep"]["all_to_all"]["bytes"] for res in members)
            calls = {res["comm"][step]["ep"]["all_to_all"]["calls"] for res in members}
            # each replica's tokens are dispatched once (split over its TP ranks)
            tokens = sum(res["step_tokens"][step] for res in members if res["tp"] == 0)
            per_layer = n * n * 8 + tokens * m.experts_per_token * (2 * m.hidden_size * 4 + 16)
            assert calls == {3 * layers}  # split sizes, rows out (packed with ids), rows back
            assert total == layers * per_layer
            replica_tokens = _replica_tokens(results[name], group, step)
            want = ep_group_bytes(topo, members[0]["pp"], replica_tokens)["all_to_all"]
            assert (total, 3 * layers * n) == (want.bytes, want.calls)


@pytest.mark.parametrize("name", _ep_names("allgather_reducescatter"))
def test_ep_allgather_reducescatter_bytes_match_the_layout(results, name):
    """Per rank and MoE layer: gather the count, rows, ids and weights padded to the largest
    rank's token count; reduce_scatter the n x padded x hidden partial outputs."""
    topo, case = _topology(name), BY_NAME[name]
    m, k = topo.config.model, topo.config.model.experts_per_token
    for group in _ep_groups(topo):
        members = [results[name][r] for r in group.ranks]
        layers, n = len(members[0]["layers"]), group.size
        for step in range(_both_busy_steps(case)):
            width = max(len(split_evenly(res["step_tokens"][step], topo.layout.tp)[res["tp"]])
                        for res in members)
            for res in members:
                ep = res["comm"][step]["ep"]
                gathered = 8 + width * m.hidden_size * 4 + width * k * (8 + 4)
                # the count, then rows + ids + weights packed in one gather
                assert ep["all_gather"] == {"calls": 2 * layers, "bytes": layers * gathered}
                assert ep["reduce_scatter"] == {"calls": layers,
                                                "bytes": layers * n * width * m.hidden_size * 4}
            want = ep_group_bytes(topo, members[0]["pp"], _replica_tokens(results[name], group,
                                                                          step))
            for op in ("all_gather", "reduce_scatter"):
                assert sum(res["comm"][step]["ep"][op]["bytes"] for res in members) == \
                    want[op].bytes


@pytest.mark.parametrize("name", _ep_names("pypto_default") + _ep_names("allgather_reducescatter"))
def test_ep_tokens_reach_their_experts_exactly_once(results, name):
    """From each expert owner's own record: every dispatched (source rank, token) reaches
    exactly top-k distinct experts, none twice, and only experts its owner holds per core."""
    topo = _topology(name)
    k = topo.config.model.experts_per_token
    for group in _ep_groups(topo):
        members = [results[name][r] for r in group.ranks]
        n_calls = {len(res["trace"]) for res in members}
        assert len(n_calls) == 1 and n_calls.pop() > 0
        assert all(rec["inputs_match"] for res in members for rec in res["trace"])
        for call in range(len(members[0]["trace"])):
            records = [res["trace"][call] for res in members]
            assert len({r["layer"] for r in records}) == 1
            sent = {(src, tok) for src, r in enumerate(records) for tok in range(r["sent"])}
            hits: Counter = Counter()
            for res, rec in zip(members, records, strict=True):
                assert sorted(int(e) for e in rec["experts"]) == res["experts"]
                for expert, pairs in rec["experts"].items():
                    pairs = [tuple(p) for p in pairs]
                    assert len(pairs) == len(set(pairs)), f"expert {expert} got a token twice"
                    hits.update(pairs)
            assert set(hits) == sent
            assert set(hits.values()) == {k}


def test_every_expert_gets_every_token_when_top_k_is_all(results):
    """top-k = num_experts: each token is processed by every expert, exactly once each."""
    name = "dp2-tp2-ep-every-expert"
    topo = _topology(name)
    experts = topo.config.model.num_experts
    assert topo.config.model.experts_per_token == experts
    for group in _ep_groups(topo):
        members = [results[name][r] for r in group.ranks]
        for call in range(len(members[0]["trace"])):
            records = [res["trace"][call] for res in members]
            sent = sorted((src, tok) for src, r in enumerate(records) for tok in range(r["sent"]))
            assert sent
            per_expert = {int(e): sorted(tuple(p) for p in pairs)
                          for rec in records for e, pairs in rec["experts"].items()}
            assert sorted(per_expert) == list(range(experts))
            for pairs in per_expert.values():
                assert pairs == sent


@pytest.mark.parametrize("name", [c["name"] for c in ALL if len(set(c["steps"])) > 1])
def test_idle_replicas_run_dummy_steps_under_dp_ep(results, name):
    """A replica that finished keeps joining the MoE all2all with dummy steps; the others
    finish (and match the reference, above) instead of hanging."""
    case = BY_NAME[name]
    longest = max(case["steps"])
    for res in results[name].values():
        mine = case["steps"][res["dp"]]
        assert res["dummy_steps"] == longest - mine
        assert len(res["tokens"][0]) == mine


@pytest.mark.parametrize("name", [c["name"] for c in ALL if c["collectives"]])
def test_group_helpers_move_the_right_values_and_count_bytes(results, name):
    """Each helper of each group on values naming their sender, checked against core's
    groups; bytes per op as documented in comm.py; a group of one moves nothing."""
    topo = _topology(name)
    for rank, res in results[name].items():
        seen = res["collectives"]
        kinds = [k for k in ("tp", "pp", "dp", "ep", "world") if k != "ep" or topo.expert_placement]
        assert sorted(k for k in seen if k != "stats") == sorted(kinds)
        for kind in kinds:
            info, rec = topo.group(kind, rank), seen[kind]
            members, n, i = list(info.ranks), info.size, info.rank_in_group(rank)
            assert rec["ranks"] == members and rec["world_size"] == n
            assert rec["rank_in_group"] == i
            assert rec["is_first_rank"] == (i == 0) and rec["is_last_rank"] == (i == n - 1)
            assert rec["prev_rank"] == info.prev_rank(rank)
            assert rec["next_rank"] == info.next_rank(rank)
            assert rec["all_reduce"] == [float(sum(members))]
            assert rec["all_gather"] == [float(r) for r in members]
            assert rec["reduce_scatter"] == [float(i * n + sum(members))]
            assert rec["all_to_all"] == [float(r) for r in members]
            assert rec["all_to_all_v"] == [float(r) for j, r in enumerate(members)
                                           for _ in range(j + 1)]
            assert rec["broadcast"] == [float(members[-1])]
            assert rec["broadcast_first"] == [float(members[0])]
            assert rec.get("recv") == ([float(info.prev_rank(rank))]
                                       if info.prev_rank(rank) is not None else None)
            stats = seen["stats"][kind]
            if n == 1:
                assert stats == {}
                continue
            expected = {
                "all_reduce": {"calls": 1, "bytes": 4},
                "all_gather": {"calls": 1, "bytes": 4},
                "reduce_scatter": {"calls": 1, "bytes": 4 * n},
                "all_to_all": {"calls": 3, "bytes": 4 * n + 8 * n + 4 * n * (i + 1)},
                "broadcast": {"calls": 2, "bytes": 8},
            }
            if info.next_rank(rank) is not None:
                expected["send"] = {"calls": 1, "bytes": 4}
            if info.prev_rank(rank) is not None:
                expected["recv"] = {"calls": 1, "bytes": 4}
            assert stats == expected
