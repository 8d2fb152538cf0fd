"""The resolved topology as one plain document: what `topo show` prints, as a table or JSON.

Schema `pypto.topology/v1` (stable: fields are only ever added). Big worlds are summarised:
at most `limit` ranks, `limit` groups per kind and `limit` members per group are listed,
with counts and `*_truncated` flags for the rest, so the document stays small at a million
ranks.
"""

from __future__ import annotations

from typing import Any

from .config import ServingConfig
from .topology import GroupInfo, Topology

SCHEMA = "pypto.topology/v1"


def layout_label(cfg: ServingConfig) -> str:
    """'DP 2 x PP 1 x TP 4 + EP 8'."""
    p = cfg.parallel
    ep = f" + EP {p.ep_size}" if p.enable_expert_parallel else ""
    return (f"DP {p.data_parallel_size} x PP {p.pipeline_parallel_size} x "
            f"TP {p.tensor_parallel_size}{ep}")


def layout_summary(cfg: ServingConfig) -> str:
    """One line: world = DP x PP x TP (+ EP) on nodes x devices; the model."""
    c, m = cfg.cluster, cfg.model
    kind = f"MoE {m.num_experts} experts" if m.is_moe else "dense"
    return (f"world {cfg.parallel.world_size} = {layout_label(cfg)} on {c.nnodes} node(s) x "
            f"{c.devices_per_node} {c.platform} device(s); model {m.name} "
            f"({m.num_layers} layers, {kind})")


def topology_document(
    topo: Topology, rank: int | None = None, kinds: tuple[str, ...] | None = None,
    limit: int = 64,
) -> dict[str, Any]:
    """Summary, ranks (all, the first `limit`, or the one `rank`) and groups of `kinds`."""
    cfg = topo.config
    p, m, c = cfg.parallel, cfg.model, cfg.cluster
    kinds = topo.group_kinds if kinds is None else kinds
    if rank is not None:
        topo.layout.check_rank(rank)
        ranks = [topo.rank_info(rank)]
    else:
        ranks = list(topo.ranks(0, limit))
    placement = topo.expert_placement
    doc: dict[str, Any] = {
        "schema": SCHEMA,
        "summary": layout_summary(cfg),
        "world_size": topo.world_size,
        "layout": {"dp": p.data_parallel_size, "pp": p.pipeline_parallel_size,
                   "tp": p.tensor_parallel_size, "ep": p.ep_size},
        "cluster": {"nnodes": c.nnodes, "devices_per_node": c.devices_per_node,
                    "platform": c.platform},
        "model": {"name": m.name, "num_layers": m.num_layers, "num_experts": m.num_experts,
                  "num_attention_heads": m.num_attention_heads, "num_kv_heads": m.num_kv_heads},
        "stage_layers": [[r.start, r.stop] for r in topo.stage_layers[:limit]],
        "expert_placement": None if placement is None else {
            "strategy": placement.strategy, "num_experts": placement.num_experts,
            "ep_size": placement.ep_size,
        },
        "ranks": [r.to_dict() for r in ranks],
        "ranks_truncated": rank is None and topo.world_size > len(ranks),
        "groups": {},
    }
    for kind in kinds:
        count = topo.num_groups(kind)
        if rank is not None:
            g = topo.group(kind, rank)
            listed = [_group_entry(g, limit) | {"rank_in_group": g.rank_in_group(rank)}]
        else:
            listed = [_group_entry(topo.group_at(kind, i), limit)
                      for i in range(min(count, limit))]
        doc["groups"][kind] = {
            "count": count, "size": topo.layout.group_size(kind), "groups": listed,
            "truncated": rank is None and count > len(listed),
        }
    return doc


def _group_entry(group: GroupInfo, limit: int) -> dict[str, Any]:
    """A group with at most `limit` of its members listed (`size` says how many there are)."""
    return {"kind": group.kind, "index": group.index, "size": group.size,
            "ranks": list(group.ranks[:limit]), "ranks_truncated": group.size > limit}
