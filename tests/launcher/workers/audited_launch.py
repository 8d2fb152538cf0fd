"""`pypto launch ARGS` with an audit hook that appends every signal the launcher sends
(`os.kill PID SIG` / `os.killpg PGID SIG`, psutil's included) to $AUDIT_SIGNALS_FILE."""

import os
import sys

log = open(os.environ.pop("AUDIT_SIGNALS_FILE"), "a", buffering=1)  # noqa: SIM115


def hook(event: str, args: tuple) -> None:
    if event in ("os.kill", "os.killpg"):
        log.write(f"{event} {args[0]} {args[1]}\n")


sys.addaudithook(hook)
sys.argv = ["pypto", "launch", *sys.argv[1:]]
from pypto_serving.cli.entry import main  # noqa: E402

main()
