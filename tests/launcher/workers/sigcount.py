"""Counts the SIGTERMs it gets (Python handler calls and raw deliveries through the wake-up
fd), spinning so each delivery is handled at once; writes FOLDER/rankN.json and exits 0."""

import json
import os
import signal
import sys
import time

folder = sys.argv[1]
rank = int(os.environ["RANK"])
wake_r, wake_w = os.pipe()
os.set_blocking(wake_r, False)
os.set_blocking(wake_w, False)
signal.set_wakeup_fd(wake_w)
calls = 0


def on_term(_signum, _frame):
    global calls
    calls += 1


signal.signal(signal.SIGTERM, on_term)
print(json.dumps({"rank": rank, "pid": os.getpid(), "ppid": os.getppid()}), flush=True)
give_up = time.monotonic() + 60
quiet_until = None
while time.monotonic() < (quiet_until or give_up):
    if calls and quiet_until is None:
        quiet_until = time.monotonic() + 0.5  # time for a second copy to arrive
    for _ in range(200):
        pass
try:
    deliveries = len(os.read(wake_r, 4096))
except BlockingIOError:
    deliveries = 0
with open(os.path.join(folder, f"rank{rank}.json"), "w") as f:
    json.dump({"calls": calls, "deliveries": deliveries}, f)
