"""Joins the gloo world, then global rank --fail-rank exits --code; the others sleep."""

import argparse
import json
import os
import sys
import time

import torch.distributed as dist

p = argparse.ArgumentParser()
p.add_argument("--fail-rank", type=int, default=-1)
p.add_argument("--code", type=int, default=9)
a = p.parse_args()
dist.init_process_group("gloo")
dist.barrier()
rank = dist.get_rank()
print(json.dumps({"rank": rank, "pid": os.getpid(), "ppid": os.getppid()}), flush=True)
if rank == a.fail_rank:
    time.sleep(0.3)
    print(f"rank {rank} failing now", file=sys.stderr, flush=True)
    os._exit(a.code)
time.sleep(60)
