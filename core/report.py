"""The resolved topology as one plain document: what `topo show` prints, as a table or JSON.

Schema `pypto.topology/v1` (stable: fields are only ever added). Big worlds are summarised:
at most `limit` (<= MAX_LIMIT) ranks, groups per kind, members per group and experts per
rank are listed, with counts and `*_truncated` flags for the rest, and the JSON is streamed,
so memory stays flat and the output bounded at a million ranks.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

from .config import ServingConfig
from .topology import GroupInfo, RankInfo, Topology

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


MAX_LIMIT = 4096
"""Largest `limit`: rows, groups per kind, and members or experts per entry listed. The
JSON is streamed entry by entry, so memory stays flat up to it; `--rank R` shows any rank."""


class LimitError(ValueError):
    """A `limit` outside 1..MAX_LIMIT."""


def topology_document(
    topo: Topology, rank: int | None = None, kinds: tuple[str, ...] | None = None,
    limit: int = 64, *, groups_limit: int | None = None, items_limit: int | None = None,
) -> dict[str, Any]:
    """Summary, ranks (all, the first `limit`, or the one `rank`) and groups of `kinds`.

    At most `limit` ranks, `groups_limit` groups per kind and `items_limit` members per
    group and experts per rank are listed (both default to `limit`); counts and
    `*_truncated` say what was left out. `iter_topology_json` writes the same document
    without holding it.
    """
    return _materialised(_document(topo, rank, kinds, limit, groups_limit, items_limit))


def iter_topology_json(
    topo: Topology, rank: int | None = None, kinds: tuple[str, ...] | None = None,
    limit: int = 64,
) -> Iterator[str]:
    """The JSON text of `topology_document(...)` in pieces, written as it is built: one line
    per rank and per group, so memory stays flat whatever the limit."""
    return _iter_json(_document(topo, rank, kinds, limit, None, None), 0)


def _document(topo: Topology, rank: int | None, kinds: tuple[str, ...] | None, limit: int,
              groups_limit: int | None, items_limit: int | None) -> dict[str, Any]:
    """The document with its long lists (ranks, groups) as iterators, built as consumed."""
    if not 1 <= limit <= MAX_LIMIT:
        raise LimitError(f"{limit} is outside 1..{MAX_LIMIT}: at most {MAX_LIMIT:,} rows, "
                         "groups per kind and members per group are listed; use --rank R "
                         "for any one rank")
    groups_limit = limit if groups_limit is None else groups_limit
    items = limit if items_limit is None else items_limit
    cfg = topo.config
    p, m, c = cfg.parallel, cfg.model, cfg.cluster
    kinds = topo.group_kinds if kinds is None else kinds
    if rank is not None:
        topo.layout.check_rank(rank)
        ranks: Iterator[RankInfo] = iter([topo.rank_info(rank)])
        listed_ranks = 1
    else:
        listed_ranks = min(limit, topo.world_size)
        ranks = topo.ranks(0, listed_ranks)
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
        "ranks": (_rank_entry(info, items) for info in ranks),
        "ranks_truncated": rank is None and topo.world_size > listed_ranks,
        "groups": {},
    }
    for kind in kinds:
        count = topo.num_groups(kind)
        if rank is not None:
            g = topo.group(kind, rank)
            listed = iter([_group_entry(g, items) | {"rank_in_group": g.rank_in_group(rank)}])
            shown = 1
        else:
            shown = min(count, groups_limit)
            listed = _group_entries(topo, kind, shown, items)
        doc["groups"][kind] = {
            "count": count, "size": topo.layout.group_size(kind), "groups": listed,
            "truncated": rank is None and count > shown,
        }
    return doc


def _rank_entry(info: RankInfo, limit: int) -> dict[str, Any]:
    """A rank with at most `limit` of its experts listed (`num_experts_held` counts them)."""
    held = len(info.experts)
    entry = replace(info, experts=info.experts[:limit]).to_dict()
    entry["experts_truncated"] = held > limit
    entry["num_experts_held"] = held
    return entry


def _group_entries(topo: Topology, kind: str, count: int, limit: int) -> Iterator[dict]:
    for index in range(count):
        yield _group_entry(topo.group_at(kind, index), limit)


def _group_entry(group: GroupInfo, limit: int) -> dict[str, Any]:
    """A group with at most `limit` of its members listed (`size` says how many there are)."""
    return {"kind": group.kind, "index": group.index, "size": group.size,
            "ranks": list(group.ranks[:limit]), "ranks_truncated": group.size > limit}


def _materialised(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _materialised(v) for k, v in value.items()}
    if isinstance(value, (list, Iterator)):
        return [_materialised(v) for v in value]
    return value


def _iter_json(value: Any, level: int) -> Iterator[str]:
    """`value` as indented JSON in pieces. Iterators (the long lists) are consumed as they
    are written, one entry per line; a dict holding one is laid out over lines; any other
    value is one line from the C encoder (fast: a million ids in well under a second)."""
    if isinstance(value, Iterator):
        opener, close = "[", "]"
        pieces: Iterator[tuple[str, Any]] = (("", v) for v in value)
    elif isinstance(value, dict) and _holds_iterator(value):
        opener, close = "{", "}"
        pieces = ((json.dumps(k) + ": ", v) for k, v in value.items())
    else:
        yield json.dumps(value)
        return
    pad, inner = "  " * level, "  " * (level + 1)
    first = True
    for prefix, item in pieces:
        yield (opener if first else ",") + "\n" + inner + prefix
        first = False
        yield from _iter_json(item, level + 1)
    yield (opener + close) if first else "\n" + pad + close


def _holds_iterator(value: Any) -> bool:
    if isinstance(value, Iterator):
        return True
    return isinstance(value, dict) and any(_holds_iterator(v) for v in value.values())
