"""Bytes each group moves in one forward step, as the executor counts them (executor/comm.py).

One set of formulas for everyone: the executor's tests assert the bytes its CommStats counted
against these, and `pypto simulate` prices them, so the two can never disagree silently.
Counting follows CommStats: the payload a rank hands to the op (all_gather: its local input;
reduce_scatter: the full input; all_to_all: its whole input; recv: what it receives). A group
of one rank moves nothing.

A step is the executor's `forward` (run_prefill / run_decode / run_dummy): `tokens` new tokens
over `seqs` sequences on each replica. Per group kind, per step:
- TP (per rank): an all_reduce of tokens x hidden per attention output and per dense MLP or
  TP-sharded MoE output, one more for the vocab-parallel embedding (first stage); under EP a
  MoE layer's output is instead an all_gather of this rank's token slice, padded to
  ceil(tokens / TP) rows; the last stage all_gathers seqs x the largest vocab shard of logits.
- PP (per rank): the residual stream tokens x hidden to the next stage (send) / from the
  previous one (recv); the sampled tokens (seqs int64) broadcast from the last stage.
- EP, backend pypto_default (summed over the group, per MoE layer): the split sizes (n x n
  int64), the routed rows out (tokens x top-k rows of hidden plus 16 bytes of expert id and
  token index), the rows back (tokens x top-k x hidden); a rank's share depends on routing.
- EP, allgather_reducescatter (per rank, per MoE layer): an all_gather of the count (int64)
  and of width rows (hidden, top-k int64 ids and top-k weights) where width is the largest
  rank's token slice; a reduce_scatter of n x width x hidden.
- DP and world: nothing in the forward pass.
Pure Python and closed-form: a group is priced from its layout sizes and stage, never from its
member list, so a million-rank world costs what a small one does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .memory import DTYPE_BYTES
from .topology import Topology

INDEX_BYTES = 8
"""int64: split sizes, expert ids, token indices and sampled tokens."""


@dataclass(frozen=True)
class OpBytes:
    """Calls of one collective op and the bytes they hand over (CommStats' view)."""

    calls: int
    bytes: int

    def __add__(self, other: OpBytes) -> OpBytes:
        return OpBytes(self.calls + other.calls, self.bytes + other.bytes)

    def scaled(self, k: int) -> OpBytes:
        return OpBytes(self.calls * k, self.bytes * k)

    def to_dict(self) -> dict[str, int]:
        return {"calls": self.calls, "bytes": self.bytes}


OpTable = dict[str, OpBytes]


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _add(table: OpTable, op: str, value: OpBytes) -> None:
    if value.calls:
        table[op] = table[op] + value if op in table else value


def _dtype_bytes(topo: Topology) -> int:
    return DTYPE_BYTES[topo.config.model.dtype]


def _is_moe_ep(topo: Topology) -> bool:
    return topo.expert_placement is not None


def tp_rank_bytes(topo: Topology, stage: int, tokens: int, seqs: int) -> OpTable:
    """One TP rank of pipeline stage `stage`, one step of `tokens` tokens over `seqs` seqs."""
    tp = topo.layout.tp
    if tp == 1:
        return {}
    m, b = topo.config.model, _dtype_bytes(topo)
    layers = len(topo.stage_layers[stage])
    first, last = stage == 0, stage == topo.layout.pp - 1
    ep = _is_moe_ep(topo)
    table: OpTable = {}
    reduces = (1 if ep else 2) * layers + first
    _add(table, "all_reduce", OpBytes(reduces, reduces * tokens * m.hidden_size * b))
    if ep:
        _add(table, "all_gather",
             OpBytes(layers, layers * ceil_div(tokens, tp) * m.hidden_size * b))
    if last:
        _add(table, "all_gather", OpBytes(1, seqs * ceil_div(m.vocab_size, tp) * b))
    return table


def pp_rank_bytes(topo: Topology, stage: int, tokens: int, seqs: int) -> OpTable:
    """One rank of pipeline stage `stage`: activations on, sampled tokens back."""
    pp = topo.layout.pp
    if pp == 1:
        return {}
    act = OpBytes(1, tokens * topo.config.model.hidden_size * _dtype_bytes(topo))
    table: OpTable = {}
    if stage < pp - 1:
        _add(table, "send", act)
    if stage > 0:
        _add(table, "recv", act)
    _add(table, "broadcast", OpBytes(1, seqs * INDEX_BYTES))
    return table


def ep_group_bytes(topo: Topology, stage: int, replica_tokens: Sequence[int]) -> OpTable:
    """An EP group of stage `stage`, summed over its members; `replica_tokens[d]`: the tokens
    of replica d's step (each replica's tokens are dispatched once, split over its TP ranks)."""
    if not _is_moe_ep(topo):
        return {}
    n = topo.layout.dp * topo.layout.tp
    if n == 1:
        return {}
    m, b = topo.config.model, _dtype_bytes(topo)
    layers, k, h = len(topo.stage_layers[stage]), m.experts_per_token, m.hidden_size
    if topo.config.parallel.all2all_backend == "allgather_reducescatter":
        tp = topo.layout.tp
        width = max(ceil_div(t, tp) for t in replica_tokens)
        gathered = INDEX_BYTES + width * h * b + width * k * (INDEX_BYTES + b)
        return {"all_gather": OpBytes(2 * layers, layers * gathered).scaled(n),
                "reduce_scatter": OpBytes(layers, layers * n * width * h * b).scaled(n)}
    routed = sum(replica_tokens) * k
    per_layer = n * n * INDEX_BYTES + routed * (h * b + 2 * INDEX_BYTES) + routed * h * b
    return {"all_to_all": OpBytes(3 * layers * n, layers * per_layer)}


def group_step_bytes(topo: Topology, kind: str, stage: int,
                     replica_tokens: Sequence[int], replica_seqs: Sequence[int],
                     replica: int = 0) -> OpTable:
    """Everything one group of `kind` moves in one step, summed over its members: a TP group
    of replica `replica` at stage `stage`, the PP group of that replica, the EP group of that
    stage, or a DP / world group (nothing)."""
    tokens, seqs = replica_tokens[replica], replica_seqs[replica]
    lay = topo.layout
    if kind == "tp":
        return {op: v.scaled(lay.tp) for op, v in tp_rank_bytes(topo, stage, tokens, seqs).items()}
    if kind == "pp":
        total: OpTable = {}
        for s in range(lay.pp) if lay.pp > 1 else ():
            for op, v in pp_rank_bytes(topo, s, tokens, seqs).items():
                _add(total, op, v)
        return total
    if kind == "ep":
        return ep_group_bytes(topo, stage, replica_tokens)
    return {}


def table_dict(table: Mapping[str, OpBytes]) -> dict[str, dict[str, int]]:
    """As CommStats.to_dict writes it: {op: {"calls", "bytes"}}, ops sorted."""
    return {op: table[op].to_dict() for op in sorted(table)}
