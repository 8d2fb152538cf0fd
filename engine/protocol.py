"""The engine's outside API: what the router and a replica leader say to each other.

Transport: ZMQ over TCP on loopback (or the node's address), one DEALER socket in the router
per replica, one ROUTER socket in each replica leader. Every frame is one msgpack map with an
"op" key; never pickle. Requests are identified by the router's `rid` (a string).

router -> engine
  add      {op, rid, prompt_token_ids: [int], sampling: SamplingParams.to_dict()}
  abort    {op, rid}
  stats    {op}                                  -> a "stats" reply
engine -> router
  output   {op, rid, token_ids: [int] (new this step), text: str (new text), finished: bool,
            finish_reason: "stop"|"length"|"abort"|"error"|None, prompt_tokens: int,
            cached_tokens: int, completion_tokens: int, timings (on the final one):
            {queue_s, prefill_s, decode_s: float, each only if reached}}
  error    {op, rid, code: int (400 bad request, 429 queue full, 500), message: str}
  stats    {op, waiting, running, pending_tokens, kv_usage (0..1), kv_blocks_total,
            kv_blocks_free, prefix_hits, prefix_queries, num_preemptions,
            steps: {prefill, decode: int}, step_seconds: {prefill, decode: float}}
            (steps run so far, and their executor seconds: "decode" steps hold only
            decodes, "prefill" ones at least one prefill chunk)
  kv_events {op, stored: [int], evicted: [int]}  (block hashes, see engine.hashing)
  hello    {op, replica: int, block_size: int, max_model_len: int, model: str,
            kv_blocks_total: int}               (sent first to every router, in answer to
                                                 its first frame: a ZMQ ROUTER cannot see a
                                                 DEALER until it speaks, so a router opens
                                                 with a "stats"; then a kv_events with every
                                                 hash cached now)
"""

from __future__ import annotations

from typing import Any

import msgpack

MAX_FRAME_BYTES = 64 << 20
"""A frame larger than this is refused unread (a prompt is at most a few MB of token ids)."""

ROUTER_OPS = frozenset({"add", "abort", "stats"})
ENGINE_OPS = frozenset({"output", "error", "stats", "kv_events", "hello"})
FINISH_REASONS = frozenset({"stop", "length", "abort", "error"})


class ProtocolError(ValueError):
    """A frame that is not a well-formed message; it is dropped with a warning."""


def encode(message: dict[str, Any]) -> bytes:
    return msgpack.packb(message, use_bin_type=True)


def decode(frame: bytes, ops: frozenset[str]) -> dict[str, Any]:
    """Decode one frame and check it is a map whose op is one of `ops`."""
    if len(frame) > MAX_FRAME_BYTES:
        raise ProtocolError(f"frame of {len(frame)} bytes is over {MAX_FRAME_BYTES}")
    try:
        message = msgpack.unpackb(frame, raw=False, strict_map_key=True)
    except Exception as e:  # msgpack raises several unrelated types for bad input
        raise ProtocolError(f"not msgpack: {e}") from None
    if not isinstance(message, dict) or message.get("op") not in ops:
        raise ProtocolError(f"not a message of {sorted(ops)}")
    return message
