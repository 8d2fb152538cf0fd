"""A worker that misbehaves on request, for supervision tests.

Every rank prints {"rank", "pid", "ppid", "grandchild"} first, then: the rank named by
--fail-rank exits with --code (or kills itself with --kill-self) after --delay seconds while
the restart count is below --fail-until-restart; every other rank sleeps --sleep seconds
(--restart-sleep after a restart; with --ignore-term it ignores SIGTERM, so only SIGKILL
ends it).
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import time

p = argparse.ArgumentParser()
p.add_argument("--fail-rank", type=int, default=-1)
p.add_argument("--code", type=int, default=3)
p.add_argument("--kill-self", action="store_true")
p.add_argument("--delay", type=float, default=0.3)
p.add_argument("--fail-until-restart", type=int, default=1 << 30)
p.add_argument("--sleep", type=float, default=60.0)
p.add_argument("--restart-sleep", type=float, default=None, help="--sleep after a restart")
p.add_argument("--grandchild", action="store_true")
p.add_argument("--ignore-term", action="store_true")
a = p.parse_args()

rank = int(os.environ["RANK"])
restart = int(os.environ["TORCHELASTIC_RESTART_COUNT"])
child = None
if a.grandchild:
    child = subprocess.Popen(["sleep", "300"])
if a.ignore_term:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
print(json.dumps({"rank": rank, "pid": os.getpid(), "ppid": os.getppid(), "restart": restart,
                  "grandchild": child.pid if child else None}), flush=True)
if rank == a.fail_rank and restart < a.fail_until_restart:
    time.sleep(a.delay)
    print(f"rank {rank} failing now", file=sys.stderr, flush=True)
    if a.kill_self:
        os.kill(os.getpid(), signal.SIGKILL)
    sys.exit(a.code)
sleep = a.restart_sleep if restart and a.restart_sleep is not None else a.sleep
time.sleep(sleep if rank != a.fail_rank else 0)
print(f"rank {rank} done", flush=True)
