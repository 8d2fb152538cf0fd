"""Worker of the timeout test: one rank is stuck, its peers wait in a TP all_reduce.

Usage, as a launched script: stuck_worker.py STUCK_RANK SLEEP_S OUT_DIR

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


def main(stuck: int, sleep_s: float, out: Path) -> None:
    ctx = distributed.init_distributed()
    tp = distributed.get_tp_group()
    if ctx.rank == stuck:
        time.sleep(sleep_s)
    start = time.monotonic()
    try:
        tp.all_reduce(torch.ones(4))
    except Exception as e:
        row = {"waited_s": time.monotonic() - start, "error": f"{type(e).__name__}: {e}"}
        (out / f"rank{ctx.rank}.json").write_text(json.dumps(row))
        raise
    (out / f"rank{ctx.rank}.json").write_text(json.dumps({"waited_s": time.monotonic() - start,
                                                          "error": None}))


if __name__ == "__main__":
    main(int(sys.argv[1]), float(sys.argv[2]), Path(sys.argv[3]))
