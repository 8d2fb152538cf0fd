"""A service worker that joins through the executor: init_distributed() in its group world.

Reports ready with what the test checks: its global rank, the ranks of its TP/DP/world
groups (global), and a TP all-reduce sum and a world all-reduce sum.
"""

import os
import signal

import torch

from pypto_serving.executor.distributed import destroy_distributed, init_distributed
from pypto_serving.launcher.health import report_ready

ctx = init_distributed()
rank = ctx.rank
tp = ctx.tp.all_reduce(torch.tensor([float(rank + 1)]))
world = ctx.world.all_reduce(torch.tensor([float(rank + 1)]))
nxt = ctx.tp.next_rank
if nxt is not None:  # point to point by global rank inside the group world
    ctx.tp.send(torch.tensor([float(rank * 10)]), nxt)
got = ctx.tp.recv((1,), torch.float32).item() if ctx.tp.prev_rank is not None else None
stop = []
signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
report_ready({"rank": rank, "pid": os.getpid(), "tp": list(ctx.tp.ranks),
              "dp": list(ctx.dp.ranks), "world": list(ctx.world.ranks), "tp_sum": tp.item(),
              "world_sum": world.item(), "from_prev": got,
              "dp_rank": int(os.environ["PYPTO_DP_RANK"])})
while not stop:
    signal.pause()
destroy_distributed()
