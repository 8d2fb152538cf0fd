"""The programmatic entry: `launch(LaunchSpec(...)) -> LaunchResult`."""

from __future__ import annotations

from typing import TextIO

from .plan import LaunchSpec, make_plan
from .prctl import become_subreaper
from .supervisor import LaunchResult, Supervisor


def launch(spec: LaunchSpec, *, stdout: TextIO | None = None, stderr: TextIO | None = None,
           own_process: bool = False) -> LaunchResult:
    """Run the workers `spec` describes on this node until they all end; never raises for
    worker failures (see LaunchResult.exit_code).

    Raises LaunchError (or core's ConfigError) for bad input, before anything is spawned.
    Worker lines go to `stdout`/`stderr` (default: sys.stdout/sys.stderr). `own_process`
    says this process exists only to launch (the CLI): it then becomes a child subreaper, so
    orphans of the workers are adopted and reaped too. SIGINT/SIGTERM are handled (and
    forwarded to the workers) when called from the main thread.
    """
    plan = make_plan(spec)
    if own_process:
        become_subreaper()
    return Supervisor(plan, stdout, stderr, subreaper=own_process).run()
