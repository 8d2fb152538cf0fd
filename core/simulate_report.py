"""What `pypto simulate` prints, as one plain document: schema `pypto.simulate/v1`.

Stable: fields are only ever added. Times in seconds, sizes in bytes. `layout` is the one
layout simulated (or the best of the search), `search` the ranked and dropped candidates,
`execute` the bytes predicted against the bytes a real run counted.
"""

from __future__ import annotations

from typing import Any

from .comm_bytes import table_dict
from .cost_model import LayoutCost, StepCost, Workload
from .hardware import HardwareSpec
from .layout_search import SearchResult, cost_label

SCHEMA = "pypto.simulate/v1"


def _step(step: StepCost) -> dict[str, Any]:
    return {
        "tokens": step.tokens, "seqs": step.seqs, "seconds": step.seconds,
        "compute_seconds": step.compute_seconds, "comm_seconds": step.comm_seconds,
        "groups": [{"kind": k.kind, "link": k.link, "seconds": k.seconds,
                    "bytes": sum(v.bytes for v in k.ops.values()), "ops": table_dict(k.ops)}
                   for k in step.kinds],
    }


def layout_entry(cost: LayoutCost) -> dict[str, Any]:
    p, m = cost.config.parallel, cost.memory
    return {
        "label": cost_label(cost),
        "dp": p.data_parallel_size, "pp": p.pipeline_parallel_size,
        "tp": p.tensor_parallel_size, "ep": p.ep_size if p.enable_expert_parallel else 0,
        "expert_placement": p.expert_placement_strategy if p.enable_expert_parallel else None,
        "groups": [{"kind": g.kind, "count": g.count, "size": g.size,
                    "crossing_nodes": g.crossing, "link": g.link} for g in cost.groups],
        "memory": {"weight_bytes": m.weight_bytes, "kv_bytes_per_token": m.kv_bytes_per_token,
                   "budget_bytes": m.budget_bytes, "kv_capacity_tokens": m.kv_capacity_tokens,
                   "needed_tokens": m.needed_tokens, "headroom_bytes": m.headroom_bytes,
                   "headroom_fraction": m.headroom_fraction, "fits": m.fits},
        "prefill": _step(cost.prefill),
        "decode": _step(cost.decode),
        "decode_tokens_per_s": cost.decode_tokens_per_s,
    }


def simulate_document(ranks: int, hw: HardwareSpec, work: Workload, model: dict[str, Any],
                      layout: LayoutCost | None, result: SearchResult | None, top: int,
                      calibration: dict[str, Any] | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "schema": SCHEMA,
        "ranks": ranks,
        "hardware": {"name": hw.name, "platform": hw.platform,
                     "devices_per_node": hw.devices_per_node,
                     "nnodes": max(1, ranks // hw.devices_per_node)},
        "model": model,
        "workload": {"batch": work.batch, "context": work.context,
                     "prompt_len": work.prompt_len},
        "calibration": calibration,
        "layout": None if layout is None else layout_entry(layout),
        "search": None,
        "execute": None,
    }
    if result is not None:
        doc["search"] = {
            "considered": result.considered, "valid": len(result.ranked),
            "ranked": [layout_entry(c) | {"rank": i + 1}
                       for i, c in enumerate(result.ranked[:top])],
            "ranked_truncated": len(result.ranked) > top,
            "dropped": [{"label": d.label, "reasons": list(d.reasons)} for d in result.dropped],
        }
    return doc


_NUM = {"type": "number"}
_INT = {"type": "integer"}
_OPS = {"type": "object", "additionalProperties": {
    "type": "object", "required": ["calls", "bytes"],
    "properties": {"calls": {"type": "integer", "minimum": 0},
                   "bytes": {"type": "integer", "minimum": 0}}}}
_STEP = {"type": "object",
         "required": ["tokens", "seqs", "seconds", "compute_seconds", "comm_seconds", "groups"],
         "properties": {"seconds": {"type": "number", "exclusiveMinimum": 0},
                        "groups": {"type": "array", "items": {
                            "type": "object",
                            "required": ["kind", "link", "seconds", "bytes", "ops"],
                            "properties": {"kind": {"enum": ["tp", "pp", "ep", "dp"]},
                                           "link": {"enum": ["intra_node", "inter_node"]},
                                           "ops": _OPS}}}}}
_LAYOUT = {
    "type": "object",
    "required": ["label", "dp", "pp", "tp", "ep", "groups", "memory", "prefill", "decode",
                 "decode_tokens_per_s"],
    "properties": {
        "dp": {"type": "integer", "minimum": 1}, "pp": {"type": "integer", "minimum": 1},
        "tp": {"type": "integer", "minimum": 1}, "ep": {"type": "integer", "minimum": 0},
        "groups": {"type": "array", "items": {
            "type": "object", "required": ["kind", "count", "size", "crossing_nodes", "link"]}},
        "memory": {"type": "object", "required": [
            "weight_bytes", "kv_bytes_per_token", "budget_bytes", "kv_capacity_tokens",
            "needed_tokens", "headroom_bytes", "headroom_fraction", "fits"]},
        "prefill": _STEP, "decode": _STEP, "decode_tokens_per_s": _NUM,
    },
}

SIMULATE_JSON_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://pypto-serving/schemas/simulate-v1.json",
    "title": SCHEMA,
    "type": "object",
    "required": ["schema", "ranks", "hardware", "model", "workload", "calibration", "layout",
                 "search", "execute"],
    "properties": {
        "schema": {"const": SCHEMA},
        "ranks": {"type": "integer", "minimum": 1},
        "hardware": {"type": "object",
                     "required": ["name", "platform", "devices_per_node", "nnodes"]},
        "model": {"type": "object", "required": ["name"]},
        "workload": {"type": "object", "required": ["batch", "context", "prompt_len"],
                     "properties": {k: {"type": "integer", "minimum": 1}
                                    for k in ("batch", "context", "prompt_len")}},
        "calibration": {"type": ["object", "null"]},
        "layout": {"oneOf": [{"type": "null"}, _LAYOUT]},
        "search": {"oneOf": [{"type": "null"}, {
            "type": "object", "required": ["considered", "valid", "ranked", "dropped"],
            "properties": {
                "considered": _INT, "valid": _INT,
                "ranked": {"type": "array", "items": _LAYOUT},
                "dropped": {"type": "array", "items": {
                    "type": "object", "required": ["label", "reasons"],
                    "properties": {"reasons": {"type": "array", "minItems": 1,
                                               "items": {"type": "string", "minLength": 1}}}}},
            }}]},
        "execute": {"oneOf": [{"type": "null"}, {
            "type": "object", "required": ["layouts"],
            "properties": {"layouts": {"type": "array", "items": {
                "type": "object",
                "required": ["label", "groups", "bytes_equal", "predicted_decode_s",
                             "measured_decode_s"],
                "properties": {"bytes_equal": {"type": "boolean"}}}}}}]},
    },
}
