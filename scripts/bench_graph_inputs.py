"""A decode graph's host-side input write (`DecodeGraphs._write`), its block tables row by row
against packed in one, in one run on this machine's CPU (no GPU needed: on the CPU the host
and device buffers are one, so the copy is a memcpy).

For each row count, the median over --rounds of the median of --calls writes of a step of
that many rows (each at --context tokens, 16-token blocks), once with every table written
row by row and once with every table packed (decode_graphs.ROW_BY_ROW_MAX set past or below
the row count), the two sides alternating by round; the ratio is packed / row by row (above
1: row by row faster). The product's threshold, ROW_BY_ROW_MAX, comes from this table.

Usage: python scripts/bench_graph_inputs.py [--rows 1,2,4,8,16,32,128] [--context 1024]
       [--rounds 7] [--calls 300]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from pypto_serving.engine.plan import SeqChunk  # noqa: E402
from pypto_serving.executor import decode_graphs  # noqa: E402
from pypto_serving.executor.kv_cache import PagedKVCache  # noqa: E402


def median_write_us(graphs: decode_graphs.DecodeGraphs, chunks: list, calls: int) -> float:
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        graphs._write(chunks, len(chunks))
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default="1,2,4,8,16,32,128")
    ap.add_argument("--context", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--calls", type=int, default=300)
    args = ap.parse_args()
    rows = [int(r) for r in args.rows.split(",")]
    blocks = args.context // 16 + 1
    cache = PagedKVCache(range(1), num_blocks=max(rows) * blocks + 1, block_size=16,
                         num_kv_heads=1, head_dim=8, dtype=torch.float32,
                         device=torch.device("cpu"), scratch=True)
    graphs = decode_graphs.DecodeGraphs(None, cache, max(rows), args.context + 16)
    threshold = decode_graphs.ROW_BY_ROW_MAX
    print(f"{'rows':>5} {'row by row us':>14} {'packed us':>10} {'packed / row by row':>20}")
    try:
        for n in rows:
            chunks = [SeqChunk(seq_id=i, token_ids=[i], start_pos=args.context, sample=True,
                               block_table=list(range(i * blocks, (i + 1) * blocks)))
                      for i in range(n)]
            sides: dict[str, list[float]] = {"row": [], "packed": []}
            for r in range(args.rounds):
                for side in (("row", "packed") if r % 2 == 0 else ("packed", "row")):
                    decode_graphs.ROW_BY_ROW_MAX = n if side == "row" else 0
                    sides[side].append(median_write_us(graphs, chunks, args.calls))
            row, packed = (statistics.median(sides[k]) for k in ("row", "packed"))
            print(f"{n:5d} {row:14.1f} {packed:10.1f} {packed / row:20.2f}")
    finally:
        decode_graphs.ROW_BY_ROW_MAX = threshold


if __name__ == "__main__":
    main()
