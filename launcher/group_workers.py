"""This node's processes of one worker group: start them (forked from the zygote or
spawned), route their output, notice their ends, signal them, and leave nothing behind.

Mechanics only: whether an end is a failure, and what happens next, is the group policy's
and the service loop's business (group_policy.py, service.py).
"""

from __future__ import annotations

import os
import selectors
import signal
import time
from collections.abc import Callable

import psutil

from . import tree
from .errors import LaunchError
from .plan import Plan
from .service_output import ServiceOutput
from .supervisor import KILL_WAIT
from .workers import Worker, ZygoteClient, spawn_worker


class GroupWorkers:
    """The workers of one group's current attempt on this node, by local rank.

    Their pipes are registered on the service loop's selector with data
    ("out", (worker, 1 | 2)); the loop hands readable ones to `read`.
    """

    def __init__(self, plan: Plan, out: ServiceOutput, sel: selectors.BaseSelector,
                 on_zygote_failure: Callable[[OSError], None]):
        self.plan = plan
        self.out = out
        self.sel = sel
        self.on_zygote_failure = on_zygote_failure
        self.workers: dict[int, Worker] = {}
        self.procs: list[psutil.Process] = []
        self.ended: set[int] = set()  # local ranks whose end was handed out
        self.kill_at: float | None = None
        self.give_up_at: float | None = None
        self.unkillable: list[str] = []

    def reset(self) -> None:
        """Forget the previous attempt (its processes are gone and its fds closed)."""
        self.workers, self.procs, self.ended = {}, [], set()
        self.kill_at = self.give_up_at = None

    def start(self, local: int, rank: int, env: dict[str, str], cpus: list[int] | None,
              zygote: ZygoteClient | None) -> Worker:
        """Start local rank `local`: forked when `zygote` is given (spawned if the zygote
        fails, after `on_zygote_failure`), else spawned."""
        plan = self.plan
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        try:
            worker = None
            if zygote is not None:
                request = {"local_rank": local, "env": env, "cwd": plan.cwd,
                           "target": plan.target.value, "is_module": plan.target.is_module,
                           "args": list(plan.target.args), "cpus": cpus}
                try:
                    pid = zygote.fork(request, (out_w, err_w))
                    worker = Worker(local, rank, pid, out_r, err_r, time.time())
                except OSError as e:
                    self.on_zygote_failure(e)
            if worker is None:
                try:
                    popen = spawn_worker(plan.target, env, plan.cwd, (out_w, err_w), cpus)
                except OSError as e:
                    raise LaunchError(f"cannot start the worker of rank {rank}: {e}",
                                      code=1) from None
                worker = Worker(local, rank, popen.pid, out_r, err_r, time.time(), popen=popen)
        except BaseException:
            os.close(out_r)
            os.close(err_r)
            raise
        finally:
            os.close(out_w)
            os.close(err_w)
        for fd, num in ((out_r, 1), (err_r, 2)):
            os.set_blocking(fd, False)
            self.sel.register(fd, selectors.EVENT_READ, ("out", (worker, num)))
        self.workers[local] = worker
        try:
            self.procs.append(psutil.Process(worker.pid))
        except psutil.Error:
            pass
        return worker

    def alive(self) -> list[Worker]:
        return [w for w in self.workers.values() if w.returncode is None]

    @property
    def done(self) -> bool:
        """Every worker has ended and its pipes are closed."""
        return not self.alive() and not any(w.open_fds for w in self.workers.values())

    # --- output -----------------------------------------------------------------------------

    def read(self, w: Worker, num: int, fd: int) -> None:
        w.read_pipe(self.sel, self.out, num, fd)

    # --- ends -------------------------------------------------------------------------------

    def newly_ended(self) -> list[Worker]:
        """Workers whose end is known now and was not handed out before (output drained).
        Forked workers' ends come from the zygote (Worker.set_status); spawned ones' here."""
        found = []
        for w in self.workers.values():
            if w.popen is not None and w.returncode is None:
                code = w.popen.poll()
                if code is not None:
                    w.returncode, w.ended = code, time.time()
            if w.returncode is not None and w.local_rank not in self.ended:
                self.ended.add(w.local_rank)
                w.drain_pipes(self.sel, self.out, close=True)
                found.append(w)
        return found

    def signal(self, sig: int, now_kill_rank: int | None = None) -> None:
        """`sig` to every live worker (its process group, once); SIGKILL at once to
        `now_kill_rank` (a hung worker: a grace period is no use to it)."""
        for w in self.alive():
            tree.signal_group_once(w.pid, signal.SIGKILL if w.rank == now_kill_rank else sig)

    def stop(self, grace: float, now_kill_rank: int | None = None) -> None:
        """SIGTERM now; `advance` SIGKILLs what is left after `grace` seconds."""
        self.signal(signal.SIGTERM, now_kill_rank)
        deadline = time.monotonic() + grace
        self.kill_at = deadline if self.kill_at is None else min(self.kill_at, deadline)
        self.give_up_at = None

    def advance(self, now: float) -> None:
        """The teardown's timers: SIGKILL at kill_at; KILL_WAIT later, a worker still
        running is named unkillable and counted as ended."""
        alive = self.alive()
        if alive and self.kill_at is not None and now >= self.kill_at:
            self.signal(signal.SIGKILL)
            self.kill_at, self.give_up_at = None, now + KILL_WAIT
        elif alive and self.give_up_at is not None and now >= self.give_up_at:
            for w in alive:
                if running(w.pid):
                    self.unkillable.append(f"rank {w.rank} (pid {w.pid})")
                w.returncode, w.ended, w.status_unknown = -signal.SIGKILL, time.time(), True

    def finish(self) -> None:
        """Every worker ended: kill and reap what they left (children, daemons)."""
        left = tree.kill_tree(self.procs, [w.pid for w in self.workers.values()])
        self.unkillable += [f"pid {proc.pid}" for proc in left]
        for w in self.workers.values():
            if w.popen is not None:
                try:
                    w.popen.wait(0)
                except Exception:  # noqa: BLE001 - already reaped, or unkillable (named)
                    pass
        self.procs = []

    def close(self) -> None:
        """The launch ends: close every pipe still open, reap spawned workers."""
        for w in self.workers.values():
            for fd in list(w.open_fds):
                try:
                    self.sel.unregister(fd)
                except (KeyError, ValueError):
                    pass
                os.close(fd)
            w.open_fds.clear()
            if w.popen is not None:
                try:
                    w.popen.wait(0)
                except Exception:  # noqa: BLE001
                    pass


def running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
