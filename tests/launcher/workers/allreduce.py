"""4-way gloo init + all_reduce + barrier; prints what the test checks, one line per rank."""
# ruff: noqa: E402 (the first check must run before any import)

import sys

# before anything imports it: a worker forked by the zygote finds torch already loaded
TORCH_PRELOADED = "torch" in sys.modules

import json
import os

import psutil
import torch
import torch.distributed as dist

dist.init_process_group("gloo")
t = torch.tensor([float(dist.get_rank() + 1)])
dist.all_reduce(t)
dist.barrier()
print(json.dumps({"rank": dist.get_rank(), "world": dist.get_world_size(), "sum": t.item(),
                  "argv": sys.argv[1:], "main": __name__, "pid": os.getpid(),
                  "ppid": os.getppid(), "torch_preloaded": TORCH_PRELOADED,
                  "cmdline": psutil.Process().cmdline(),
                  "parent_cmdline": psutil.Process(os.getppid()).cmdline(),
                  "secret_seen": "PYPTO_LAUNCH_SECRET" in os.environ}))
dist.destroy_process_group()
