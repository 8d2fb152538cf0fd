"""Two stdout lines, one stderr line, and a last stdout line without a newline."""

import os
import sys

rank = os.environ["RANK"]
print(f"out one {rank}")
print(f"err {rank}", file=sys.stderr)
print(f"out two {rank}")
sys.stdout.write(f"no newline {rank}")
