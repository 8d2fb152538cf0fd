"""Leaves a hostile TORCHELASTIC_ERROR_FILE and exits 1: `fifo` (a FIFO nobody writes),
`big` (a 300 MB file, sparse), or `control` (a message with terminal control bytes)."""

import json
import os
import sys

path = os.environ["TORCHELASTIC_ERROR_FILE"]
mode = sys.argv[1]
if mode == "fifo":
    os.mkfifo(path)
elif mode == "big":
    with open(path, "wb") as f:
        f.write(b'{"message": "')
        f.truncate(300_000_000)
else:
    with open(path, "w") as f:
        json.dump({"message": {"message": "boom \x1b[2J\x07 done"}}, f)
sys.exit(1)
