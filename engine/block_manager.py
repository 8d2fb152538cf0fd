"""Paged KV blocks of one replica: reference counts, block tables and the prefix cache.

The pool has `num_blocks` ids, valid on every rank of the replica (one block table per
sequence serves all TP ranks and PP stages). A block is free (ref 0, no hash), cached and
evictable (ref 0, hash kept, in LRU order), or in use (ref >= 1; shared prefix blocks have
ref > 1). A full block whose KV is computed is registered in the prefix cache under its chained
hash (`engine.hashing`); it outlives its request until an allocation needs it back (LRU over
unreferenced cached blocks). Everything here is incremental: a decode step touches O(1) per
sequence, never a whole block table. No torch, no shards.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from .hashing import ROOT_HASH, block_hash
from .request import Request


class BlockError(RuntimeError):
    """A broken block invariant (a double free, freeing a sequence that holds no blocks)."""


class BlockPool:
    """Block ids with reference counts, a free list, the LRU of evictable cached blocks and
    the hash -> block index of the prefix cache."""

    def __init__(self, num_blocks: int):
        if num_blocks < 1:
            raise ValueError(f"a KV pool needs at least one block, got {num_blocks}")
        self.num_blocks = num_blocks
        self.ref_counts = [0] * num_blocks
        self.hash_of: list[int | None] = [None] * num_blocks
        self.cached: dict[int, int] = {}
        """hash -> block id of every block in the prefix cache (in use or evictable)."""
        self._free: list[int] = list(range(num_blocks - 1, -1, -1))  # pop() gives 0 first
        self._evictable: OrderedDict[int, None] = OrderedDict()
        self._changed: dict[int, bool] = {}
        """hash -> whether it was cached at the last drain, for hashes touched since."""

    @property
    def num_free(self) -> int:
        """Blocks an allocation can take: free ones plus evictable cached ones."""
        return len(self._free) + len(self._evictable)

    @property
    def num_evictable(self) -> int:
        return len(self._evictable)

    def allocate(self) -> int:
        """A block with ref 1: a free one, else the least recently used evictable one (its
        hash leaves the prefix cache)."""
        if self._free:
            block = self._free.pop()
        elif self._evictable:
            block, _ = self._evictable.popitem(last=False)
            self._uncache(block)
        else:
            raise BlockError("no free KV block (the scheduler must check num_free first)")
        self.ref_counts[block] = 1
        return block

    def touch(self, block: int) -> None:
        """Take one more reference to a cached block (a prefix hit)."""
        if self.ref_counts[block] == 0:
            if block not in self._evictable:
                raise BlockError(f"block {block} is free and not cached; it cannot be shared")
            del self._evictable[block]
        self.ref_counts[block] += 1

    def release(self, block: int) -> None:
        """Drop one reference; at 0 a cached block becomes evictable (most recently used),
        an uncached one free."""
        ref = self.ref_counts[block]
        if ref <= 0:
            raise BlockError(f"double free of KV block {block} (its reference count is 0)")
        self.ref_counts[block] = ref - 1
        if ref == 1:
            if self.hash_of[block] is not None:
                self._evictable[block] = None
            else:
                self._free.append(block)

    def cache(self, block: int, h: int) -> bool:
        """Register an in-use block under hash `h`; False if another block already holds it
        (two sequences computed the same prefix at once: this one stays uncached)."""
        owner = self.cached.get(h)
        if owner is not None:
            return owner == block
        if self.hash_of[block] is not None:
            raise BlockError(f"block {block} is already cached under another hash")
        self.cached[h] = block
        self.hash_of[block] = h
        self._changed.setdefault(h, False)
        return True

    def _uncache(self, block: int) -> None:
        h = self.hash_of[block]
        if h is not None:
            self.hash_of[block] = None
            del self.cached[h]
            self._changed.setdefault(h, True)

    def drain_events(self) -> tuple[list[int], list[int]]:
        """(stored, evicted) hashes since the last drain, netted: a hash stored then evicted
        in between is in neither, one evicted then stored again is in neither."""
        stored: list[int] = []
        evicted: list[int] = []
        for h, was_cached in self._changed.items():
            now = h in self.cached
            if now and not was_cached:
                stored.append(h)
            elif was_cached and not now:
                evicted.append(h)
        self._changed.clear()
        return stored, evicted


class BlockManager:
    """Block tables of the replica's sequences over one `BlockPool`, with the prefix cache."""

    def __init__(self, num_blocks: int, block_size: int, enable_prefix_cache: bool = True):
        if block_size < 1:
            raise ValueError(f"block_size must be at least 1, got {block_size}")
        self.pool = BlockPool(num_blocks)
        self.block_size = block_size
        self.enable_prefix_cache = enable_prefix_cache
        self._tables: dict[int, list[int]] = {}
        self._num_hashed: dict[int, int] = {}
        """seq_id -> leading blocks of its table already registered (or tried) in the cache."""

    @property
    def num_blocks(self) -> int:
        return self.pool.num_blocks

    @property
    def num_free(self) -> int:
        return self.pool.num_free

    @property
    def num_used(self) -> int:
        return self.pool.num_blocks - self.pool.num_free

    @property
    def usage(self) -> float:
        return self.num_used / self.pool.num_blocks

    def block_table(self, seq_id: int) -> list[int]:
        """The sequence's block table (the live list, not a copy: valid until the next
        allocation or free)."""
        return self._tables[seq_id]

    def holds(self, seq_id: int) -> bool:
        return seq_id in self._tables

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    # --- the prefix cache -------------------------------------------------------------------

    def _hash_at(self, req: Request, i: int) -> int:
        """Hash of the request's block i (its tokens must be known), computed once."""
        hashes = req.block_hashes
        while len(hashes) <= i:
            j = len(hashes)
            parent = hashes[j - 1] if j else ROOT_HASH
            bs = self.block_size
            hashes.append(block_hash(parent, req.token_ids[j * bs:(j + 1) * bs]))
        return hashes[i]

    def find_cached_prefix(self, req: Request) -> list[int]:
        """Blocks of the longest cached prefix of the request's tokens, leaving at least one
        token to compute (its logits are what the next token is sampled from)."""
        if not self.enable_prefix_cache:
            return []
        cached = self.pool.cached
        hits: list[int] = []
        for i in range((req.num_tokens - 1) // self.block_size):
            block = cached.get(self._hash_at(req, i))
            if block is None:
                break
            hits.append(block)
        return hits

    def cache_full_blocks(self, req: Request) -> None:
        """Register the request's blocks that became full of computed KV since the last call."""
        if not self.enable_prefix_cache:
            return
        seq_id = req.seq_id
        full = req.num_computed_tokens // self.block_size
        done = self._num_hashed[seq_id]
        if full <= done:
            return
        table = self._tables[seq_id]
        for i in range(done, full):
            self.pool.cache(table[i], self._hash_at(req, i))
        self._num_hashed[seq_id] = full

    # --- allocation -------------------------------------------------------------------------

    def allocate(self, req: Request, num_tokens: int, cached_blocks: Sequence[int] = ()) -> bool:
        """Grow the request's table to cover its first `num_tokens` tokens, starting (for a
        request that holds none) with `cached_blocks` from `find_cached_prefix`. False, with
        nothing changed, if the pool cannot supply the blocks."""
        seq_id = req.seq_id
        table = self._tables.get(seq_id)
        if table is not None and num_tokens <= len(table) * self.block_size:
            return True  # the decode fast path: the last block has room
        have = len(table) if table is not None else 0
        need = self.blocks_for(num_tokens) - have - len(cached_blocks)
        pool = self.pool
        taken_from_free = sum(1 for b in cached_blocks if pool.ref_counts[b] == 0)
        if need > pool.num_free - taken_from_free:
            return False
        if table is None:
            table = self._tables[seq_id] = []
            self._num_hashed[seq_id] = 0
        elif cached_blocks:
            raise BlockError(f"sequence {seq_id} already holds blocks; a prefix hit applies "
                             "only to a sequence that holds none")
        for block in cached_blocks:
            pool.touch(block)
        table.extend(cached_blocks)
        self._num_hashed[seq_id] += len(cached_blocks)
        for _ in range(need):
            table.append(pool.allocate())
        return True

    def free(self, req: Request) -> None:
        """Give back every block of the request (last block first, so that the LRU evicts a
        sequence's tail before the prefix others are likelier to share)."""
        table = self._tables.pop(req.seq_id, None)
        if table is None:
            raise BlockError(f"sequence {req.seq_id} ({req.rid!r}) holds no KV blocks to free")
        del self._num_hashed[req.seq_id]
        for block in reversed(table):
            self.pool.release(block)

    def drain_kv_events(self) -> tuple[list[int], list[int]]:
        """(stored, evicted) block hashes since the last call (what a router subscribes to)."""
        return self.pool.drain_events()

    def cached_hashes(self) -> list[int]:
        """Every hash in the prefix cache now (sent to a router when it connects)."""
        return list(self.pool.cached)

    def check(self) -> None:
        """Verify the invariants (tests and the property test call it): every reference is
        a table entry, free and evictable blocks are unreferenced, nothing is lost."""
        pool = self.pool
        refs = [0] * pool.num_blocks
        for table in self._tables.values():
            for b in table:
                refs[b] += 1
        if refs != pool.ref_counts:
            bad = [b for b in range(pool.num_blocks) if refs[b] != pool.ref_counts[b]]
            raise BlockError(f"reference counts disagree with block tables at blocks {bad[:8]}")
        free, evictable = set(pool._free), set(pool._evictable)
        if len(free) != len(pool._free):
            raise BlockError("a block is twice in the free list")
        if free & evictable:
            raise BlockError("a block is both free and evictable")
        unreferenced = {b for b in range(pool.num_blocks) if refs[b] == 0}
        if free | evictable != unreferenced:
            raise BlockError("unreferenced blocks are not all free or evictable (a leak)")
        for h, b in pool.cached.items():
            if pool.hash_of[b] != h:
                raise BlockError(f"cache index and block {b} disagree on its hash")
        if any(pool.hash_of[b] is not None for b in free):
            raise BlockError("a free block still carries a hash")
