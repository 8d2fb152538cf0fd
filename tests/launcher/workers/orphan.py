"""Starts `sleep 300` in a new session (escaping the worker's process group), prints its
pid, and exits at once, leaving it orphaned."""

import json
import os
import subprocess

child = subprocess.Popen(["sleep", "300"], start_new_session=True)
print(json.dumps({"rank": int(os.environ["RANK"]), "pid": os.getpid(), "orphan": child.pid}))
