"""Rank 0 exits 1 as soon as rank 1 is dead (a reaction to a peer's death, like a collective
failing on a reset connection); rank 1 sleeps until it is killed."""

import json
import os
import sys
import time

folder = sys.argv[1]
rank = int(os.environ["RANK"])
with open(os.path.join(folder, f"rank{rank}.pid"), "w") as f:
    f.write(str(os.getpid()))
print(json.dumps({"rank": rank, "pid": os.getpid(), "ppid": os.getppid()}), flush=True)
if rank == 1:
    time.sleep(60)
    sys.exit(0)
peer_file = os.path.join(folder, "rank1.pid")
while not os.path.exists(peer_file):
    time.sleep(0.01)
peer = int(open(peer_file).read())
while True:
    try:
        state = open(f"/proc/{peer}/stat").read().rsplit(")", 1)[1].split()[0]
    except OSError:
        state = "gone"
    if state in ("Z", "X", "gone"):
        print("peer died, giving up", file=sys.stderr, flush=True)
        sys.exit(1)
    time.sleep(0.01)
