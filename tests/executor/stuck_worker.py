"""Worker of the timeout test: one rank is stuck, its peers wait in an all_reduce over a group.

Usage, as a launched script: stuck_worker.py KIND STUCK_RANK SLEEP_S OUT_DIR (KIND: tp, pp, dp
or ep, the group the all_reduce runs on)

The stuck rank sleeps SLEEP_S (far beyond PYPTO_COMM_TIMEOUT_S) before the all_reduce; every
other rank enters it at once and writes OUT_DIR/rank{R}.json: how long it waited and the
error it got. Then it re-raises, so the job fails as a real worker would.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from pypto_serving.executor import distributed


def main(kind: str, stuck: int, sleep_s: float, out: Path) -> None:
    ctx = distributed.init_distributed()
    group = distributed.get_group(kind)
    if ctx.rank == stuck:
        time.sleep(sleep_s)
    start = time.monotonic()
    try:
        group.all_reduce(torch.ones(4))
    except Exception as e:
        row = {"waited_s": time.monotonic() - start, "error": f"{type(e).__name__}: {e}"}
        (out / f"rank{ctx.rank}.json").write_text(json.dumps(row))
        raise
    (out / f"rank{ctx.rank}.json").write_text(json.dumps({"waited_s": time.monotonic() - start,
                                                          "error": None}))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), Path(sys.argv[4]))
