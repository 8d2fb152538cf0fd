"""`pypto launch --service`: run a ServiceLaunch in the foreground, print its events on
stderr as they happen, and turn the launcher's signals into a stop."""

from __future__ import annotations

import json
import signal
import sys
import threading
from typing import TextIO

from .group_policy import LaunchEvent
from .plan import LaunchSpec
from .prctl import become_subreaper
from .service import ServiceLaunch, ServiceResult, service_plan
from .supervisor import HANDLED_SIGNALS


def run_service(spec: LaunchSpec, *, stdout: TextIO | None = None,
                stderr: TextIO | None = None, own_process: bool = False,
                **options: float | int | None) -> ServiceResult:
    """The CLI's service launch: start it, print every event on stderr as it happens,
    forward SIGINT/SIGTERM/SIGHUP/SIGQUIT as a stop (a second one kills at once).

    `options` are ServiceLaunch's keyword arguments. Raises LaunchError for bad input
    before anything starts.
    """
    plan = service_plan(spec)
    err = sys.stderr if stderr is None else stderr
    launch = ServiceLaunch(plan, stdout=stdout, stderr=stderr, **options)  # type: ignore[arg-type]
    if own_process:
        become_subreaper()
    received: list[int] = []
    old = {}
    if threading.current_thread() is threading.main_thread():
        for sig in HANDLED_SIGNALS:
            old[sig] = signal.signal(sig, lambda signum, _frame: received.append(signum))
    try:
        launch.start()
        asked = 0
        while True:
            event = launch.next_event(timeout=0.1)
            if event is not None:
                _print_event(event, err)
            elif launch.ended:
                break
            if len(received) > asked:
                launch.request_stop(plan.grace_period if asked == 0 else 0.0)
                asked = len(received)
        result = launch.wait()
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
    if received:
        result.exit_code = 128 + received[0]
        result.signal = signal.Signals(received[0]).name
    if result.cause:
        _say(err, f"pypto launch: {result.cause}")
    for what in result.unkillable:
        _say(err, f"pypto launch: could not kill (still running after SIGKILL): {what}")
    return result


def _print_event(event: LaunchEvent, err: TextIO) -> None:
    lines = [f"pypto launch: {event.describe()}"]
    if event.kind == "ready" and any(event.payloads.values()):
        lines.append("  payloads: " + json.dumps({str(k): v for k, v in
                                                   event.payloads.items()}, default=str))
    if event.kind == "failed" and event.log_tail:
        lines.append(f"  last {len(event.log_tail)} line(s) of rank {event.rank}'s output:")
        lines += [f"    [rank{event.rank}]:{line}" for line in event.log_tail]
    _say(err, "\n".join(lines))


def _say(err: TextIO, text: str) -> None:
    try:
        err.write(text + "\n")
        err.flush()
    except (BrokenPipeError, ValueError):
        pass
