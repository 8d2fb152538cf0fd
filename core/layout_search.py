"""Every layout of N ranks on a hardware shape: valid ones priced and ranked, the others
dropped with the contract's own reasons (or the memory they lack).

A candidate is DP x PP x TP = N, with expert parallelism off or on (MoE models) and, with
it on, each expert placement strategy. Validation is the config's (`parse_config`), so the
search can never admit a layout that `pypto launch` would refuse.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .config import ServingConfig
from .cost_model import LayoutCost, LinkModel, Workload, layout_cost
from .errors import ConfigError
from .hardware import HardwareSpec
from .loader import parse_config
from .report import layout_label


class RanksError(ValueError):
    """--ranks that the hardware shape cannot hold."""


def cluster_for(ranks: int, hw: HardwareSpec) -> dict[str, Any]:
    """The cluster section for `ranks` ranks on `hw`'s nodes: whole nodes, or one part-node."""
    if ranks < 1:
        raise RanksError(f"--ranks {ranks}: give at least 1 rank")
    per = hw.devices_per_node
    if ranks <= per:
        return {"nnodes": 1, "devices_per_node": ranks, "platform": hw.platform}
    if ranks % per:
        lo, hi = ranks // per * per, (ranks // per + 1) * per
        raise RanksError(f"--ranks {ranks}: {hw.name} has {per} devices per node, so more than "
                         f"one node needs a multiple of {per}; use {lo} or {hi}")
    return {"nnodes": ranks // per, "devices_per_node": per, "platform": hw.platform}


def candidate(base: ServingConfig, hw: HardwareSpec, ranks: int, dp: int, pp: int, tp: int,
              ep: bool, strategy: str = "linear") -> dict[str, Any]:
    """The config mapping of one candidate layout: `base`'s model, serve and parallel options
    (backend), with this layout's sizes and the cluster of `ranks` ranks on `hw`."""
    data = base.model_dump(mode="json")
    keep = {k: data["parallel"][k] for k in ("all2all_backend", "data_parallel_backend",
                                             "data_parallel_load_balance")}
    data["parallel"] = {**keep, "data_parallel_size": dp, "pipeline_parallel_size": pp,
                        "tensor_parallel_size": tp, "enable_expert_parallel": ep,
                        "expert_placement_strategy": strategy}
    data["cluster"] = cluster_for(ranks, hw)
    return data


def candidate_label(parallel: dict[str, Any]) -> str:
    ep = (f" + EP {parallel['data_parallel_size'] * parallel['tensor_parallel_size']}"
          f" ({parallel['expert_placement_strategy']})" if parallel["enable_expert_parallel"]
          else "")
    return (f"DP {parallel['data_parallel_size']} x PP {parallel['pipeline_parallel_size']} x "
            f"TP {parallel['tensor_parallel_size']}{ep}")


def cost_label(cost: LayoutCost) -> str:
    p = cost.config.parallel
    return layout_label(cost.config) + (f" ({p.expert_placement_strategy})"
                                        if p.enable_expert_parallel else "")


@dataclass(frozen=True)
class Dropped:
    label: str
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class SearchResult:
    ranked: tuple[LayoutCost, ...]
    dropped: tuple[Dropped, ...]

    @property
    def considered(self) -> int:
        return len(self.ranked) + len(self.dropped)


def _factorizations(n: int) -> list[tuple[int, int, int]]:
    divisors = [d for d in range(1, n + 1) if n % d == 0] if n < 1 << 16 else _divisors(n)
    out = []
    for dp in divisors:
        for pp in divisors:
            if (n // dp) % pp == 0:
                out.append((dp, pp, n // dp // pp))
    return out


def _divisors(n: int) -> list[int]:
    small, large, d = [], [], 1
    while d * d <= n:
        if n % d == 0:
            small.append(d)
            if d * d != n:
                large.append(n // d)
        d += 1
    return small + large[::-1]


def memory_reason(cost: LayoutCost) -> str | None:
    m = cost.memory
    gib = 1 << 30
    if m.budget_bytes - m.weight_bytes < 0:
        return (f"memory: {m.weight_bytes / gib:.1f} GiB of weights per rank exceed the "
                f"{m.budget_bytes / gib:.1f} GiB budget (device memory x "
                "serve.gpu_memory_utilization); use more TP, PP or EP")
    if not m.fits:
        return (f"memory: the KV cache of {m.needed_tokens} tokens (batch x context) needs "
                f"{m.needed_tokens * m.kv_bytes_per_token / gib:.1f} GiB per rank beside "
                f"{m.weight_bytes / gib:.1f} GiB of weights, but holds {m.kv_capacity_tokens} "
                "tokens; use a smaller batch or context, or more TP or PP")
    return None


def rank_key(cost: LayoutCost) -> tuple[float, float, float]:
    """Highest decode throughput first, then lowest prefill latency, then most headroom."""
    return (-cost.decode_tokens_per_s, cost.prefill.seconds, -cost.memory.headroom_fraction)


def search(base: ServingConfig, hw: HardwareSpec, work: Workload, ranks: int,
           links: LinkModel | None = None) -> SearchResult:
    """Every candidate layout of `ranks` ranks on `hw`, priced and ranked, or dropped."""
    links = links or LinkModel.of(hw)
    cluster_for(ranks, hw)  # a bad --ranks fails before anything is enumerated
    moe = base.model.is_moe
    ranked: list[LayoutCost] = []
    dropped: list[Dropped] = []
    for dp, pp, tp in _factorizations(ranks):
        variants = [(False, "linear")] + ([(True, "linear"), (True, "round_robin")]
                                          if moe else [])
        for ep, strategy in variants:
            data = candidate(base, hw, ranks, dp, pp, tp, ep, strategy)
            try:
                cfg = parse_config(data)
            except ConfigError as e:
                dropped.append(Dropped(candidate_label(data["parallel"]),
                                       tuple(str(i) for i in e.issues)))
                continue
            cost = layout_cost(cfg, hw, work, links)
            why = memory_reason(cost)
            if why is not None:
                dropped.append(Dropped(cost_label(cost), (why,)))
                continue
            ranked.append(cost)
    ranked.sort(key=rank_key)
    return SearchResult(tuple(ranked), tuple(dropped))
