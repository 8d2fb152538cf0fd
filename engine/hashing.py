"""Prefix-block identity shared by the engine and the router: a chained hash of full blocks.

Block i's hash covers its parent's hash and its own tokens, so equal hashes mean equal
prefixes. It is a real hash (BLAKE2b, 8 bytes as an int), stable across processes and
machines, unlike Python's `hash`. The router hashes a prompt the same way to learn, exactly,
which replica holds its longest cached prefix from the replicas' block events.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence

ROOT_HASH = 0
"""Parent hash of a sequence's first block."""


def block_hash(parent: int, tokens: Sequence[int]) -> int:
    """Hash of one full block given its parent's hash."""
    h = hashlib.blake2b(digest_size=8)
    h.update(parent.to_bytes(8, "little"))
    h.update(struct.pack(f"<{len(tokens)}q", *tokens))
    return int.from_bytes(h.digest(), "little")


def block_hashes(token_ids: Sequence[int], block_size: int, parent: int = ROOT_HASH) -> list[int]:
    """Hashes of every full block of `token_ids` (a trailing partial block has none)."""
    out: list[int] = []
    for start in range(0, len(token_ids) - block_size + 1, block_size):
        parent = block_hash(parent, token_ids[start:start + block_size])
        out.append(parent)
    return out
