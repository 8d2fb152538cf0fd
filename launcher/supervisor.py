"""Runs a Plan: start the local group, stream its output, supervise it, tear it down.

One thread, one selector over every worker pipe, the zygote socket and (spawn mode) pidfds.
The first worker that exits non-zero or dies on a signal stops the others (SIGTERM, then
SIGKILL after the grace period) and the group restarts while restarts remain. SIGINT or
SIGTERM to the launcher is forwarded to the workers the same way. Whatever the ending,
every process of the tree is killed and reaped before `run` returns.
"""

from __future__ import annotations

import hashlib
import os
import selectors
import shutil
import signal
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from . import rendezvous, tree
from .devices import cpu_sets
from .env import config_file, error_file, worker_env
from .errors import LaunchError
from .output import OutputRouter
from .plan import Plan
from .report import WorkerEnd, failure_report, read_error_file
from .workers import Worker, ZygoteClient, fork_rule_allows, spawn_worker

ZYGOTE_READY_TIMEOUT = 120.0
DRAIN_AFTER_EXIT = 1.0
POLL = 0.1
HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)


class _Stop(BaseException):
    """A signal arrived before the workers were up: unwind and clean up."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


@dataclass
class LaunchResult:
    """How a launch ended. exit_code: 0 success, 1 worker failure, 128+N on signal N."""

    exit_code: int
    restarts: int = 0
    failures: list[WorkerEnd] = field(default_factory=list)
    start_method: str = "spawn"
    fork_refused: str = ""
    signal: str | None = None
    wall_s: float = 0.0
    log_dir: Path | None = None


def _root_cause_order(end: WorkerEnd) -> tuple[bool, float, int]:
    """Among failures noticed together, the likely cause first.

    Exits reach us in batches (the zygote reaps whatever is dead when it gets to run), so
    arrival order says little. A worker killed by a signal (the launcher has sent none yet)
    cannot have been reacting to a peer, while an exception exit often is (a peer's socket
    closed), so signal deaths come first, then the earliest noticed, then the lowest rank.
    """
    return (end.returncode >= 0, end.time, end.local_rank)


class Supervisor:
    """Owns one launch from first check to last reaped process."""

    def __init__(self, plan: Plan, stdout=None, stderr=None, subreaper: bool = False):
        self.plan = plan
        self.out = OutputRouter(plan, stdout, stderr)
        self.subreaper = subreaper
        self.zygote: ZygoteClient | None = None
        self.workers: list[Worker] = []
        self._attempt = 0
        self._procs: list[psutil.Process] = []
        self._signals: list[int] = []
        self._starting = True
        self._old_handlers: dict[int, object] = {}

    # --- top level -------------------------------------------------------------------------

    def run(self) -> LaunchResult:
        start = time.monotonic()
        result = LaunchResult(exit_code=1, log_dir=self.plan.log_dir)
        self.run_dir = Path(tempfile.mkdtemp(prefix="pypto-launch-"))
        self._install_signals()
        try:
            result = self._run(result)
        except _Stop as stop:
            result.exit_code, result.signal = 128 + stop.signum, signal.Signals(stop.signum).name
            self.out.say(f"pypto launch: stopped by {result.signal} before the workers ran")
        finally:
            self._starting = False
            self._cleanup()
            result.wall_s = time.monotonic() - start
        return result

    def _run(self, result: LaunchResult) -> LaunchResult:
        plan = self.plan
        for warning in plan.warnings:
            self.out.say(f"pypto launch: warning: {warning}")
        topology = plan.topology()
        if plan.config is not None:
            config_file(self.run_dir).write_text(plan.config.model_dump_json())
        if plan.nnodes == 1:
            rendezvous.check_port_free(plan.master_port)
        allowed, why_not = fork_rule_allows(plan.start_method, plan.platform,
                                            plan.nproc_per_node, dict(plan.base_env))
        if allowed:
            self.zygote = ZygoteClient(dict(plan.base_env), plan.cwd)
            self._track(self.zygote.pid)
        if plan.nnodes > 1:
            self._rendezvous()
        if self.zygote is not None:
            safe, why_not = self.zygote.wait_ready(ZYGOTE_READY_TIMEOUT)
            if not safe:
                self.out.say(f"pypto launch: not forking workers ({why_not}); spawning them")
                self.zygote.close()
                self.zygote = None
        result.start_method = "fork" if self.zygote is not None else "spawn"
        result.fork_refused = why_not
        attempts = plan.max_restarts + 1
        for attempt in range(attempts):
            self.out.open_logs(attempt)
            self._start_group(attempt, topology)
            first, ends, stop = self._supervise()
            if stop is not None:
                result.exit_code, result.signal = 128 + stop, signal.Signals(stop).name
                self.out.say(f"pypto launch: stopped by {result.signal}; all workers ended")
                return result
            if first is None:
                result.exit_code = 0
                return result
            result.failures.append(first)
            self.out.say(failure_report(first, [e for e in ends if e is not first], attempt,
                                        attempts))
            if attempt + 1 < attempts:
                result.restarts = attempt + 1
                self.out.say(f"pypto launch: restarting the local group "
                             f"(restart {attempt + 1} of {plan.max_restarts})")
        result.exit_code = 1
        return result

    def _rendezvous(self) -> None:
        plan = self.plan
        digest = ""
        if plan.config is not None:
            digest = hashlib.sha256(plan.config.model_dump_json().encode()).hexdigest()[:16]
        me = rendezvous.NodeHello(plan.node_rank, plan.nnodes, plan.nproc_per_node,
                                  plan.run_id, digest)
        if plan.node_rank == 0:
            rendezvous.host(plan.master_port, me, plan.rdzv_timeout)
        else:
            rendezvous.join(plan.master_addr, plan.master_port, me, plan.rdzv_timeout)

    # --- one attempt -----------------------------------------------------------------------

    def _start_group(self, restart_count: int, topology) -> None:
        plan = self.plan
        self._starting = True
        self._attempt = restart_count
        if self._signals:
            raise _Stop(self._signals[0])
        cpus = cpu_sets(plan.nproc_per_node) if plan.cpu_bind else None
        self.workers = []
        self.out.new_attempt()
        for local in range(plan.nproc_per_node):
            env = worker_env(plan, local, restart_count, self.run_dir, topology)
            error_file(self.run_dir, restart_count, local).parent.mkdir(parents=True,
                                                                       exist_ok=True)
            out_r, out_w = os.pipe()
            err_r, err_w = os.pipe()
            try:
                worker = self._start_one(local, env, (out_w, err_w),
                                         cpus[local] if cpus else None, out_r, err_r)
            except BaseException:
                os.close(out_r)
                os.close(err_r)
                raise
            finally:
                os.close(out_w)
                os.close(err_w)
            self.workers.append(worker)
            self._track(worker.pid)
        self._starting = False

    def _track(self, pid: int) -> None:
        try:
            self._procs.append(psutil.Process(pid))
        except psutil.Error:
            pass

    def _start_one(self, local: int, env: dict[str, str], fds: tuple[int, int],
                   cpus: list[int] | None, out_r: int, err_r: int) -> Worker:
        plan = self.plan
        for fd in (out_r, err_r):
            os.set_blocking(fd, False)
        rank = plan.global_rank(local)
        if self.zygote is not None:
            request = {"local_rank": local, "env": env, "cwd": plan.cwd,
                       "target": plan.target.value, "is_module": plan.target.is_module,
                       "args": list(plan.target.args), "cpus": cpus}
            try:
                pid = self.zygote.fork(request, fds)
                return Worker(local, rank, pid, out_r, err_r, time.time())
            except OSError as e:
                raise LaunchError(f"the zygote died while starting local rank {local} ({e}); "
                                  "retry, or use --start-method spawn", code=1) from None
        try:
            popen = spawn_worker(plan.target, env, plan.cwd, fds, cpus)
        except OSError as e:
            raise LaunchError(f"cannot start the worker of local rank {local}: {e}",
                              code=1) from None
        return Worker(local, rank, popen.pid, out_r, err_r, time.time(), popen=popen)

    def _supervise(self) -> tuple[WorkerEnd | None, list[WorkerEnd], int | None]:
        """Watch the group until every worker ended; (first failure, all ends, signal)."""
        sel = selectors.DefaultSelector()
        by_pid = {w.pid: w for w in self.workers}
        for w in self.workers:
            sel.register(w.stdout_fd, selectors.EVENT_READ, (w, 1))
            sel.register(w.stderr_fd, selectors.EVENT_READ, (w, 2))
            if w.popen is not None:
                try:
                    sel.register(os.pidfd_open(w.pid), selectors.EVENT_READ, (w, 0))
                except (AttributeError, OSError):
                    pass
        if self.zygote is not None:
            sel.register(self.zygote.fileno(), selectors.EVENT_READ, None)
        first: WorkerEnd | None = None
        ends: dict[int, WorkerEnd] = {}
        stop: int | None = None
        kill_at: float | None = None
        drain_until: float | None = None
        try:
            while True:
                if self.zygote is not None:  # exits that arrived while we were forking
                    for pid, status in self.zygote.take_queued():
                        if pid in by_pid:
                            by_pid[pid].set_status(status)
                for key, _ in sel.select(timeout=POLL):
                    if key.data is None:
                        assert self.zygote is not None
                        for pid, status in self.zygote.drain():
                            if pid in by_pid:
                                by_pid[pid].set_status(status)
                        if self.zygote.closed:
                            sel.unregister(key.fileobj)
                            self._zygote_lost()
                    elif key.data[1] == 0:
                        sel.unregister(key.fd)
                        os.close(key.fd)
                    else:
                        self._read(sel, key.data[0], key.data[1], key.fd)
                for w in self.workers:
                    if w.popen is not None and w.returncode is None:
                        code = w.popen.poll()
                        if code is not None:
                            w.returncode, w.ended = code, time.time()
                now = time.monotonic()
                batch = []
                for w in self.workers:
                    if w.returncode is not None and w.local_rank not in ends:
                        self._drain_worker(sel, w)
                        ends[w.local_rank] = self._end_of(w)
                        batch.append(ends[w.local_rank])
                failed = [e for e in batch if e.returncode != 0]
                if failed and first is None and stop is None:
                    first = min(failed, key=_root_cause_order)
                    self._signal_group(signal.SIGTERM)
                    kill_at = now + self.plan.grace_period
                if self._signals and stop is None:
                    stop = self._signals[0]
                    self._signal_group(stop)
                    kill_at = now + self.plan.grace_period
                if stop is not None and len(self._signals) > 1:
                    kill_at = now
                if kill_at is not None and now >= kill_at:
                    self._signal_group(signal.SIGKILL)
                    kill_at = None
                if len(ends) == len(self.workers):
                    drain_until = drain_until or now + DRAIN_AFTER_EXIT
                    if now >= drain_until or not sel.get_map() or self._only_control(sel):
                        break
        finally:
            for key in list(sel.get_map().values()):
                if key.data is not None:
                    os.close(key.fd)
            sel.close()
            for w in self.workers:
                self.out.close_stream(w.local_rank, 1)
                self.out.close_stream(w.local_rank, 2)
            self._kill_leftovers(grace=0.0)
        order = sorted(ends.values(), key=lambda e: e.time)
        return first, order, stop

    def _only_control(self, sel: selectors.BaseSelector) -> bool:
        return all(key.data is None or key.data[1] == 0 for key in sel.get_map().values())

    def _read(self, sel, w: Worker, fd_num: int, fd: int) -> None:
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            self.out.feed(w.local_rank, fd_num, data)
            return
        sel.unregister(fd)
        os.close(fd)
        w.open_fds.discard(fd)
        self.out.close_stream(w.local_rank, fd_num)

    def _drain_worker(self, sel, w: Worker) -> None:
        """Read what a just-ended worker left in its pipes, so its tail is complete."""
        for fd, fd_num in ((w.stdout_fd, 1), (w.stderr_fd, 2)):
            for _ in range(64):
                if fd not in w.open_fds:
                    break
                try:
                    data = os.read(fd, 65536)
                except BlockingIOError:
                    break
                if not data:
                    self._read(sel, w, fd_num, fd)
                    break
                self.out.feed(w.local_rank, fd_num, data)

    def _end_of(self, w: Worker) -> WorkerEnd:
        assert w.returncode is not None
        restart = self._attempt
        error = read_error_file(error_file(self.run_dir, restart, w.local_rank))
        return WorkerEnd(rank=w.rank, local_rank=w.local_rank, node=self.plan.node_rank,
                         returncode=w.returncode, time=w.ended or time.time(),
                         restart_count=restart, tail=tuple(self.out.tails[w.local_rank]),
                         error=error)

    def _signal_group(self, sig: int) -> None:
        for w in self.workers:
            if w.returncode is None:
                tree.signal_groups([w.pid], sig)
                try:
                    os.kill(w.pid, sig)
                except OSError:
                    pass

    def _zygote_lost(self) -> None:
        for w in self.workers:
            if w.returncode is None:
                w.returncode, w.ended = -signal.SIGKILL, time.time()

    def _kill_leftovers(self, grace: float) -> None:
        """Kill every process left in this attempt's tree (grandchildren, daemons)."""
        roots: list[psutil.Process] = [p for p in self._procs
                                       if self.zygote is None or p.pid != self.zygote.pid]
        for w in self.workers:
            if w.popen is not None and w.popen.poll() is None:
                w.popen.kill()
                w.popen.wait()
        roots += self._zygote_children()
        tree.kill_tree(roots, [w.pid for w in self.workers], grace,
                       adopt_children_of=None)

    def _zygote_children(self) -> list[psutil.Process]:
        """The zygote's children: workers and the orphans it adopted as subreaper."""
        if self.zygote is None:
            return []
        try:
            return psutil.Process(self.zygote.pid).children()
        except psutil.Error:
            return []

    # --- signals and cleanup ---------------------------------------------------------------

    def _install_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in HANDLED_SIGNALS:
            self._old_handlers[sig] = signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, _frame) -> None:
        self._signals.append(signum)
        if self._starting:
            raise _Stop(signum)

    def _cleanup(self) -> None:
        try:  # the tree first: orphans adopted by the zygote die before it does
            tree.kill_tree([p for p in self._procs if self.zygote is None
                            or p.pid != self.zygote.pid]
                           + self._zygote_children(), [w.pid for w in self.workers], 0.0)
            if self.zygote is not None:
                self.zygote.close()
            tree.kill_tree(self._procs, [w.pid for w in self.workers], 0.0,
                           adopt_children_of=os.getpid() if self.subreaper else None)
        finally:
            self.out.close()
            shutil.rmtree(self.run_dir, ignore_errors=True)
            for sig, handler in self._old_handlers.items():
                signal.signal(sig, handler)


__all__ = ["LaunchResult", "Supervisor", "WorkerEnd"]
