"""Leaves descendants three ways, prints their pids, then sleeps: a child in the worker's
process group, a child in a new session, and an orphan in a new session (its parent
exits at once, so it is re-parented)."""

import json
import os
import subprocess
import sys
import time

same_group = subprocess.Popen(["sleep", "300"])
own_session = subprocess.Popen(["sleep", "300"], start_new_session=True)
middle = subprocess.run(
    [sys.executable, "-c", "import subprocess; print(subprocess.Popen(['sleep', '300'], "
     "start_new_session=True, stdout=subprocess.DEVNULL, "
     "stderr=subprocess.DEVNULL).pid)"], capture_output=True, text=True, check=True)
orphan = int(middle.stdout)
print(json.dumps({"rank": int(os.environ["RANK"]), "pid": os.getpid(), "ppid": os.getppid(),
                  "left": [same_group.pid, own_session.pid, orphan]}), flush=True)
time.sleep(300)
