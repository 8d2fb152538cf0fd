"""Linux process-control knobs the launcher relies on, through libc (no-ops elsewhere).

- parent-death signal: a worker (or the zygote) is killed when its parent dies, so even a
  kill -9 of the launcher leaves no orphans behind;
- child subreaper: orphaned grandchildren are re-parented to us, not to init, so the whole
  tree stays visible to psutil and can be reaped.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36

_libc = None


def _prctl(option: int, value: int) -> bool:
    global _libc
    if not sys.platform.startswith("linux"):
        return False
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc.prctl(option, value, 0, 0, 0) == 0


def die_with_parent(expected_parent: int, sig: int = signal.SIGKILL) -> None:
    """Get `sig` when the parent dies; exit now if it already has (re-parented)."""
    _prctl(PR_SET_PDEATHSIG, int(sig))
    if os.getppid() != expected_parent:
        os._exit(1)


def keep_on_parent_death(expected_parent: int) -> None:
    """Clear the parent-death signal (the caller cleans up after its parent itself); exit
    now if the parent is already gone."""
    _prctl(PR_SET_PDEATHSIG, 0)
    if os.getppid() != expected_parent:
        os._exit(1)


def become_subreaper() -> bool:
    """Adopt orphaned descendants (Linux >= 3.4). True when it took effect."""
    return _prctl(PR_SET_CHILD_SUBREAPER, 1)
