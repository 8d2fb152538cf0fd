"""Ending whole process trees: workers, their children, and orphans they left behind.

Every worker runs in its own process group; the tree is found three ways (psutil
descendants of each root, members of the workers' process groups, and orphans re-parented
to a subreaper), then SIGKILLed and reaped.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterable

import psutil


def collect(roots: Iterable[int | psutil.Process], groups: Iterable[int] = (),
            adopt_children_of: int | None = None) -> list[psutil.Process]:
    """Live processes in the trees under `roots`, in process groups `groups`, and (when
    this process is a subreaper) every descendant of `adopt_children_of`."""
    found: dict[int, psutil.Process] = {}
    me = os.getpid()
    for root in roots:
        try:
            proc = root if isinstance(root, psutil.Process) else psutil.Process(root)
            if not proc.is_running():
                continue
            found[proc.pid] = proc
            for child in proc.children(recursive=True):
                found[child.pid] = child
        except psutil.Error:
            continue
    group_set = {g for g in groups if g}
    if group_set:
        for proc in psutil.process_iter():
            try:
                if proc.pid != me and os.getpgid(proc.pid) in group_set:
                    found.setdefault(proc.pid, proc)
            except (OSError, psutil.Error):
                continue
    if adopt_children_of is not None:
        try:
            for child in psutil.Process(adopt_children_of).children(recursive=True):
                found.setdefault(child.pid, child)
        except psutil.Error:
            pass
    found.pop(me, None)
    return list(found.values())


def signal_all(procs: Iterable[psutil.Process], sig: int) -> None:
    for proc in procs:
        try:
            proc.send_signal(sig)
        except psutil.Error:
            pass


def signal_group_once(leader: int, sig: int) -> None:
    """Signal the process group `leader` leads; only when that fails (the process moved to
    another group) the process itself. Never both: a group leader would get `sig` twice."""
    try:
        os.killpg(leader, sig)
        return
    except OSError:
        pass
    try:
        os.kill(leader, sig)
    except OSError:
        pass


def kill_tree(roots: Iterable[int | psutil.Process], groups: Iterable[int] = (),
              adopt_children_of: int | None = None) -> list[psutil.Process]:
    """SIGKILL the whole tree and reap it; return leftovers (processes still alive after
    SIGKILL, normally none). The grace period (SIGTERM first) is the supervisor's."""
    roots, groups = list(roots), list(groups)
    procs = collect(roots, groups, adopt_children_of)
    for _ in range(3):
        procs = [p for p in procs if _alive(p)]
        procs += [p for p in collect(roots, groups, adopt_children_of)
                  if _alive(p) and p not in procs]
        if not procs:
            break
        signal_all(procs, signal.SIGKILL)
        _, procs = psutil.wait_procs(procs, timeout=2.0)
    reap_zombies()
    return [p for p in procs if _alive(p)]


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def reap_zombies() -> None:
    """Collect exit statuses of our own dead children (adopted orphans included)."""
    try:
        children = psutil.Process().children()
    except psutil.Error:
        return
    for child in children:
        try:
            if child.status() == psutil.STATUS_ZOMBIE:
                os.waitpid(child.pid, os.WNOHANG)
        except (OSError, psutil.Error):
            continue
