"""Floods stdout with 1 KiB lines until stopped; the rank named by --fail-rank instead
exits 3 after --delay seconds. Each rank touches DIR/rank<N>.ready first."""

import argparse
import os
import sys
import time

p = argparse.ArgumentParser()
p.add_argument("dir")
p.add_argument("--fail-rank", type=int, default=-1)
p.add_argument("--delay", type=float, default=1.0)
a = p.parse_args()
rank = int(os.environ["RANK"])
open(os.path.join(a.dir, f"rank{rank}.ready"), "w").close()
if rank == a.fail_rank:
    time.sleep(a.delay)
    print(f"rank {rank} failing now", file=sys.stderr, flush=True)
    sys.exit(3)
line = ("x" * 1023 + "\n").encode()
while True:
    os.write(1, line * 64)
