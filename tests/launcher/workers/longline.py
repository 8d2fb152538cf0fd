"""Prints a short line, one line of --size bytes written in 10 KiB pieces, and a last
line without a newline; every rank at once, so long lines overlap in time."""

import os
import sys

size = int(sys.argv[1])
rank = int(os.environ["RANK"])
os.write(1, f"short {rank}\n".encode())
body = (f"<{rank}>" + "abcdefghij" * (size // 10))[:size].encode()
for i in range(0, size, 10240):
    os.write(1, body[i:i + 10240])
os.write(1, b"\n")
os.write(2, f"err {rank}\n".encode())
os.write(1, f"after {rank}".encode())
