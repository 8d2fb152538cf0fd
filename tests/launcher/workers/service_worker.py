"""A service worker: joins its group's gloo world, all-reduces, reports ready, serves.

It reports ready with its pid, global rank and the all-reduce sum over its group world
(which proves the world is the group's), then waits for SIGTERM. Env knobs for the tests:
SERVICE_EXIT0_RANK / SERVICE_FAIL_RANK (global rank) exit 0 / 3 after ready on attempt 0;
SERVICE_FAIL_ALWAYS_RANK exits 3 after ready on every attempt; SERVICE_NEVER_READY_RANK skips
report_ready; SERVICE_SPEAK_BYTES prints that many bytes of lines after ready (log rotation).
"""

import json
import os
import signal
import sys

import torch
import torch.distributed as dist

from pypto_serving.launcher.health import report_ready

rank = int(os.environ["PYPTO_RANK"])
attempt = int(os.environ["TORCHELASTIC_RESTART_COUNT"])
dist.init_process_group("gloo")
t = torch.tensor([float(rank + 1)])
dist.all_reduce(t)
info = {"rank": rank, "group_rank": dist.get_rank(), "world": dist.get_world_size(),
        "sum": t.item(), "pid": os.getpid(), "attempt": attempt,
        "group": int(os.environ["PYPTO_GROUP"])}
print(json.dumps(info), flush=True)
stop = []
signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
if os.environ.get("SERVICE_NEVER_READY_RANK") != str(rank):
    report_ready(info)
if attempt == 0 and os.environ.get("SERVICE_EXIT0_RANK") == str(rank):
    print("leaving with 0", flush=True)
    sys.exit(0)
if os.environ.get("SERVICE_FAIL_ALWAYS_RANK") == str(rank):
    print(f"failing with 3 on attempt {attempt}", flush=True)
    sys.exit(3)
for i in range(int(os.environ.get("SERVICE_SPEAK_BYTES", "0")) // 100):
    print(f"{i:08d} " + "x" * 90, flush=True)
if attempt == 0 and os.environ.get("SERVICE_FAIL_RANK") == str(rank):
    print("failing with 3", flush=True)
    sys.exit(3)
while not stop:
    signal.pause()
dist.destroy_process_group()
