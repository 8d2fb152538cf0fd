"""The cost of one layout: memory per rank, communication per group and step time, by formula.

Pure Python and closed-form (docs/simulation.md explains it and its limits):
- memory: weights and KV bytes per token per rank from core/memory.py (the sharding rules);
- communication: bytes per group and step from core/comm_bytes.py (what the executor counts),
  timed by an alpha-beta model per link kind, collectives by their ring cost;
- compute: a roofline per stage (FLOPs / peak, bytes / memory bandwidth, the larger) plus a
  fixed host overhead per layer.
A step runs as the executor runs it: stage after stage, communication not overlapped.
Every group of one kind at one stage moves the same bytes, so a layout is priced from one
representative rank per stage: a million-rank world costs what a small one does.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from .comm_bytes import OpBytes, OpTable, ep_group_bytes, pp_rank_bytes, tp_rank_bytes
from .config import ServingConfig
from .hardware import HardwareSpec, LinkKind, LinkSpec
from .layout import GROUP_KINDS
from .memory import DTYPE_BYTES, kv_bytes_per_token, weight_bytes
from .topology import RankInfo, Topology

COMM_KINDS = ("tp", "pp", "ep", "dp")


@dataclass(frozen=True)
class Workload:
    """What a step holds: decode steps of `batch` sequences per replica at `context` tokens
    each; prefill of one `prompt_len`-token prompt (the latency a new request sees)."""

    batch: int = 32
    context: int = 2048
    prompt_len: int = 1024


@dataclass(frozen=True)
class LinkModel:
    """Alpha-beta figures per link kind; a calibration adds measured ones per op, and per op
    and group size where it measured that size (the most specific one applies)."""

    links: Mapping[str, LinkSpec]
    per_op: Mapping[tuple[str, str], LinkSpec] = field(default_factory=dict)
    per_size: Mapping[tuple[str, str, int], LinkSpec] = field(default_factory=dict)

    def spec(self, link: LinkKind, op: str, n: int = 0) -> LinkSpec:
        return (self.per_size.get((link, op, n)) or self.per_op.get((link, op))
                or self.links[link])

    @classmethod
    def of(cls, hw: HardwareSpec) -> LinkModel:
        return cls({"intra_node": hw.links.intra_node, "inter_node": hw.links.inter_node})


def ring_terms(op: str, n: int) -> tuple[float, float]:
    """(latency terms, bandwidth factor on the bytes a rank hands the op) of one call of `op`
    over `n` ranks, ring algorithms: all_reduce 2(n-1) and 2(n-1)/n; all_gather (input
    counted) n-1 and n-1; reduce_scatter / all_to_all n-1 and (n-1)/n; broadcast a pipelined
    tree, ceil(log2 n) and 1; send / recv 1 and 1."""
    if n < 2:
        return 0.0, 0.0
    if op == "all_reduce":
        return 2 * (n - 1), 2 * (n - 1) / n
    if op == "all_gather":
        return n - 1, n - 1
    if op in ("reduce_scatter", "all_to_all"):
        return n - 1, (n - 1) / n
    if op == "broadcast":
        return math.ceil(math.log2(n)), 1.0
    if op in ("send", "recv", "send_recv"):
        return 1.0, 1.0
    raise ValueError(f"no cost for op {op!r}")


def op_seconds(op: str, n: int, calls: float, nbytes: float, link: LinkSpec) -> float:
    """`calls` calls of `op` over `n` ranks handing over `nbytes` in all (per rank)."""
    alpha, factor = ring_terms(op, n)
    return calls * alpha * link.latency_us * 1e-6 + factor * nbytes / (link.bandwidth_gbps * 1e9)


def _kind_plan(topo: Topology, kind: str) -> tuple[list[tuple[int, int]], int]:
    """(fixed dims as (size, stride), the group's largest member offset) of a group kind."""
    lay = topo.layout
    strides, s = {}, 1
    for name, size in reversed(lay.dims):
        strides[name] = s
        s *= size
    spans = GROUP_KINDS[kind]
    fixed = [(size, strides[d]) for d, size in lay.dims if d not in spans]
    reach = sum((size - 1) * strides[d] for d, size in lay.dims if d in spans)
    return fixed, reach


def groups_crossing_nodes(topo: Topology, kind: str) -> int:
    """How many groups of `kind` span more than one node. Nodes are runs of devices_per_node
    ranks, and a group's members lie between its first rank b and b + reach, so it crosses
    iff b mod devices_per_node + reach >= devices_per_node: counted over the residues of b
    (a histogram per fixed dimension), never over the groups themselves."""
    per_node = topo.config.cluster.devices_per_node
    fixed, reach = _kind_plan(topo, kind)
    total = math.prod(size for size, _ in fixed)
    if reach == 0:
        return 0
    if reach >= per_node:
        return total
    hist = [0] * per_node
    hist[0] = 1
    for size, stride in fixed:
        period = per_node // math.gcd(stride, per_node)
        full, rem = divmod(size, period)
        dim = [0] * per_node
        for c in range(min(size, period)):
            dim[c * stride % per_node] += full + (c < rem)
        out = [0] * per_node
        for a, ca in enumerate(hist):
            if ca:
                for b, cb in enumerate(dim):
                    if cb:
                        out[(a + b) % per_node] += ca * cb
        hist = out
    return sum(hist[per_node - reach:])


@dataclass(frozen=True)
class GroupSummary:
    kind: str
    count: int
    size: int
    crossing: int

    @property
    def link(self) -> LinkKind:
        return "inter_node" if self.crossing else "intra_node"


def group_summaries(topo: Topology) -> list[GroupSummary]:
    out = []
    for kind in topo.group_kinds:
        if kind not in COMM_KINDS and kind != "world":
            continue
        out.append(GroupSummary(kind, topo.layout.num_groups(kind), topo.layout.group_size(kind),
                                groups_crossing_nodes(topo, kind)))
    return out


@dataclass(frozen=True)
class Memory:
    """Per rank, the most loaded stage: weights, KV bytes per token, what the budget holds."""

    weight_bytes: int
    kv_bytes_per_token: int
    budget_bytes: int  # device memory x utilization
    kv_capacity_tokens: int  # KV tokens that fit beside the weights (per replica)
    needed_tokens: int  # batch x context
    headroom_bytes: int  # budget - weights - KV of the workload

    @property
    def fits(self) -> bool:
        return self.headroom_bytes >= 0

    @property
    def headroom_fraction(self) -> float:
        return self.headroom_bytes / self.budget_bytes


@dataclass(frozen=True)
class KindCost:
    """One group kind in one step: bytes of one group (summed over members, the busiest
    stage) and the time it adds to the step (summed over the stages it runs in)."""

    kind: str
    ops: OpTable
    seconds: float
    link: LinkKind


@dataclass(frozen=True)
class StepCost:
    tokens: int
    seqs: int
    seconds: float
    compute_seconds: float
    comm_seconds: float
    kinds: tuple[KindCost, ...]


@dataclass(frozen=True)
class LayoutCost:
    """Everything the simulator says about one layout under one workload."""

    config: ServingConfig
    groups: tuple[GroupSummary, ...]
    memory: Memory
    prefill: StepCost
    decode: StepCost

    @property
    def decode_tokens_per_s(self) -> float:
        return self.config.parallel.data_parallel_size * self.decode.seqs / self.decode.seconds


def _stage_rank(topo: Topology, stage: int) -> RankInfo:
    return topo.rank_info(topo.layout.rank_of(dp=0, pp=stage, tp=0))


def memory_cost(topo: Topology, hw: HardwareSpec, work: Workload) -> Memory:
    cfg = topo.config
    budget = int(hw.device.memory_bytes * cfg.serve.gpu_memory_utilization)
    worst: Memory | None = None
    for stage in range(topo.layout.pp):
        info = _stage_rank(topo, stage)
        w = weight_bytes(info, cfg.model, topo.expert_placement is not None)
        kv = kv_bytes_per_token(info, cfg.model)
        free = budget - w
        capacity = max(free, 0) // kv if kv else -1
        needed = work.batch * work.context
        m = Memory(w, kv, budget, capacity, needed, free - needed * kv)
        if worst is None or m.headroom_bytes < worst.headroom_bytes:
            worst = m
    return worst


def _touched(experts: int, routed_rows: float) -> float:
    """Expected fraction of `experts` that at least one of `routed_rows` uniformly routed
    rows reaches (their weights are read this step)."""
    if experts == 0:
        return 0.0
    return 1.0 - (1.0 - 1.0 / experts) ** routed_rows


def compute_seconds(topo: Topology, hw: HardwareSpec, stage: int, tokens: int, seqs: int,
                    attended: int, replica_tokens: int) -> float:
    """Roofline time of one stage's rank: max(FLOPs / peak, bytes / bandwidth), plus host
    overhead per layer and per expert run (the executor calls each expert that got rows).
    `attended`: (query, key) pairs of the step; `replica_tokens`: tokens of every replica
    routed to the EP group (EP only)."""
    m = topo.config.model
    info = _stage_rank(topo, stage)
    b = DTYPE_BYTES[m.dtype]
    h, d = m.hidden_size, m.head_dim
    heads, kv = len(info.attention_heads), len(info.kv_cache.kv_heads)
    layers = len(info.layers)
    cols = len(info.mlp_columns)
    ep = topo.expert_placement is not None
    flops = 2 * tokens * h * d * (2 * heads + 2 * kv) + 4 * heads * d * attended
    expert_bytes = 3 * h * m.intermediate_size * b
    if not m.is_moe:
        flops += 2 * tokens * 3 * h * cols
        ffn_bytes = 3 * h * cols * b
        experts_run = 0.0
    elif ep:
        n = topo.layout.dp * topo.layout.tp
        rows = replica_tokens * m.experts_per_token / n
        flops += 2 * rows * 3 * h * m.intermediate_size
        flops += 2 * math.ceil(tokens / topo.layout.tp) * h * m.num_experts
        touched = _touched(m.num_experts, replica_tokens * m.experts_per_token)
        ffn_bytes = len(info.experts) * touched * expert_bytes + m.num_experts * h * b
        experts_run = len(info.experts) * touched
    else:
        flops += 2 * tokens * m.experts_per_token * 3 * h * cols + 2 * tokens * h * m.num_experts
        touched = _touched(m.num_experts, tokens * m.experts_per_token)
        ffn_bytes = m.num_experts * touched * 3 * h * cols * b + m.num_experts * h * b
        experts_run = m.num_experts * touched
    flops *= layers
    attn_weights = (2 * heads + 2 * kv) * d * h * b
    nbytes = layers * (attn_weights + ffn_bytes)
    nbytes += attended * kv_bytes_per_token(info, m)  # every attended key and value, read
    if info.is_last_stage:
        flops += 2 * seqs * h * len(info.vocab)
        nbytes += len(info.vocab) * h * b
    peak = hw.device.peak_flops(m.dtype)
    roof = max(flops / peak, nbytes / (hw.device.memory_bandwidth_gbps * 1e9))
    overhead = layers * (hw.layer_overhead_us + experts_run * hw.expert_overhead_us)
    return roof + overhead * 1e-6


def shared_compute_factor(topo: Topology, hw: HardwareSpec) -> float:
    """How much slower a rank computes when a node's ranks share fewer compute slots (a CPU
    host's cores): the ranks of a node that compute at once, over the slots. Stages of a
    pipeline take turns (one batch goes stage after stage), so a node's busy ranks are its
    ranks / PP."""
    slots = hw.compute_slots_per_node
    if slots is None:
        return 1.0
    busy = max(1.0, topo.config.cluster.devices_per_node / topo.layout.pp)
    return max(1.0, busy / slots)


def _table_seconds(table: OpTable, n: int, links: LinkModel, link: LinkKind) -> float:
    return sum(op_seconds(op, n, v.calls, v.bytes, links.spec(link, op, n))
               for op, v in table.items())


def step_cost(topo: Topology, hw: HardwareSpec, links: LinkModel,
              groups: Mapping[str, GroupSummary], tokens: int, seqs: int, attended: int,
              other_replica_tokens: int) -> StepCost:
    """One step on every replica (the others with `other_replica_tokens` each)."""
    lay = topo.layout
    replica_tokens = [tokens] + [other_replica_tokens] * (lay.dp - 1)
    compute = 0.0
    kinds: dict[str, KindCost] = {}

    def add(kind: str, table: OpTable, seconds: float) -> None:
        link = groups[kind].link if kind in groups else "intra_node"
        prev = kinds.get(kind)
        if prev is None:
            kinds[kind] = KindCost(kind, table, seconds, link)
        else:
            bigger = table if _total(table) > _total(prev.ops) else prev.ops
            kinds[kind] = KindCost(kind, bigger, prev.seconds + seconds, link)

    slowdown = shared_compute_factor(topo, hw)
    for stage in range(lay.pp):
        compute += slowdown * compute_seconds(topo, hw, stage, tokens, seqs, attended,
                                              sum(replica_tokens))
        if lay.tp > 1:
            per_rank = tp_rank_bytes(topo, stage, tokens, seqs)
            add("tp", {op: v.scaled(lay.tp) for op, v in per_rank.items()},
                _table_seconds(per_rank, lay.tp, links, groups["tp"].link))
        if topo.expert_placement is not None and lay.dp * lay.tp > 1:
            n = lay.dp * lay.tp
            group = ep_group_bytes(topo, stage, replica_tokens)
            mean = {op: OpBytes(v.calls // n, v.bytes // n) for op, v in group.items()}
            add("ep", group, _table_seconds(mean, n, links, groups["ep"].link))
    if lay.pp > 1:
        link = groups["pp"].link
        total: OpTable = {}
        seconds = 0.0
        for stage in range(lay.pp):
            for op, v in pp_rank_bytes(topo, stage, tokens, seqs).items():
                total[op] = total[op] + v if op in total else v
        act = pp_rank_bytes(topo, 0, tokens, seqs)["send"]
        seconds += (lay.pp - 1) * op_seconds("send", 2, 1, act.bytes,
                                             links.spec(link, "send", 2))
        seconds += op_seconds("broadcast", lay.pp, 1, seqs * 8,
                              links.spec(link, "broadcast", lay.pp))
        add("pp", total, seconds)
    comm = sum(k.seconds for k in kinds.values())
    order = [k for k in COMM_KINDS if k in kinds]
    return StepCost(tokens, seqs, compute + comm, compute, comm,
                    tuple(kinds[k] for k in order))


def _total(table: OpTable) -> int:
    return sum(v.bytes for v in table.values())


def layout_cost(cfg: ServingConfig, hw: HardwareSpec, work: Workload,
                links: LinkModel | None = None) -> LayoutCost:
    """Price a validated config on `hw` under `work`."""
    topo = Topology(cfg)
    links = links or LinkModel.of(hw)
    groups = group_summaries(topo)
    by_kind = {g.kind: g for g in groups}
    p = work.prompt_len
    prefill = step_cost(topo, hw, links, by_kind, p, 1, p * (p + 1) // 2, 1)
    decode = step_cost(topo, hw, links, by_kind, work.batch, work.batch,
                       work.batch * work.context, work.batch)
    return LayoutCost(cfg, tuple(groups), memory_cost(topo, hw, work), prefill, decode)
