"""What a worker sees of its own interpreter: must match a fresh `python script.py`."""

import atexit
import json
import os
import random
import sys
import threading
import time

import numpy
import torch


def late():
    time.sleep(0.2)
    print("thread finished", flush=True)


threading.Thread(target=late).start()
atexit.register(lambda: print("atexit ran", flush=True))
print(json.dumps({
    "rank": int(os.environ["RANK"]),
    "random": random.random(),
    "numpy": float(numpy.random.random()),
    "torch_seed": torch.initial_seed(),
    "threads": torch.get_num_threads(),
    "main": __name__,
    "file": __file__,
    "path0": sys.path[0],
    "argv0": sys.argv[0],
    "stdin": sys.stdin.read(),
    "stdout_tty": sys.stdout.isatty(),
    "unbuffered": sys.stdout.write_through,
    "affinity": sorted(os.sched_getaffinity(0)),
    "pgid_is_pid": os.getpgid(0) == os.getpid(),
}))
if os.environ.get("FRESH_EXIT"):
    sys.exit(int(os.environ["FRESH_EXIT"]))
if os.environ.get("FRESH_RAISE"):
    raise RuntimeError("boom from the worker")
