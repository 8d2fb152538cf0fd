"""Runs a Plan: start the local group, stream its output, supervise it, tear it down.

One thread, one selector over every worker pipe, the zygote socket and (spawn mode) pidfds.
The first worker that exits non-zero or dies on a signal stops the others (SIGTERM, then
SIGKILL after the grace period) and the group restarts while restarts remain. SIGINT or
SIGTERM to the launcher is forwarded to the workers the same way. Whatever the ending,
every process of the tree is killed and reaped before `run` returns.
"""

from __future__ import annotations

import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import psutil

from . import rendezvous, tree
from .control import ControlChannel
from .devices import cpu_sets
from .env import config_file, error_file, worker_env
from .errors import LaunchError
from .output import OutputRouter
from .plan import Plan
from .report import WorkerEnd, cause_report, describe_exit, failure_report, read_error_file
from .workers import Worker, ZygoteClient, fork_rule_allows, spawn_worker

if TYPE_CHECKING:
    from ..core.topology import Topology

ZYGOTE_READY_TIMEOUT = 120.0
DRAIN_AFTER_EXIT = 1.0
POLL = 0.1
KILL_WAIT = 3.0  # after SIGKILL: how long ends may take to be reported before we give up
REPORT_WAIT = 5.0  # a forked worker dead this long without the zygote's report has ended
RUN_DIR_PREFIX = "pypto-launch-run-"  # + launcher pid: stale ones are swept at start
HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)


class _Stop(BaseException):
    """A signal arrived before the workers were up: unwind and clean up. Raised only at
    safe points (`_check_stop`), never from inside the signal handler."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


@dataclass
class LaunchResult:
    """How a launch ended. exit_code: 0 success, 1 worker failure, 128+N on signal N;
    restarts: how many times the group was restarted; failures: the root-cause failure of
    each failed attempt; start_method: "fork" or "spawn"; signal: the signal's name when one
    stopped the launch; cause: a failure that is no worker's (the zygote died, another node
    failed), as check-comm reports it."""

    exit_code: int
    restarts: int = 0
    failures: list[WorkerEnd] = field(default_factory=list)
    start_method: str = "spawn"
    signal: str | None = None
    cause: str | None = None


@dataclass
class AttemptEnd:
    """How one attempt ended: the local root-cause failure, every end, the signal that
    stopped it, or a cause that is no worker's (the zygote died, another node failed)."""

    first: WorkerEnd | None
    ends: list[WorkerEnd]
    signal: int | None = None
    cause: str | None = None
    zygote_died: bool = False


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

    def __init__(self, plan: Plan, stdout: TextIO | None = None, stderr: TextIO | None = None,
                 subreaper: bool = False):
        """`stdout`/`stderr`: where worker lines and launcher messages go (default: sys's).
        `subreaper`: this process adopts orphans (the CLI), so cleanup looks under it too."""
        self.plan = plan
        self.out = OutputRouter(plan, stdout, stderr)
        self.subreaper = subreaper
        self.zygote: ZygoteClient | None = None
        self.forking = False  # workers are forked from the preloaded zygote, not exec'd
        self.control: ControlChannel | None = None
        self.workers: list[Worker] = []
        self._attempt = 0
        self._procs: list[psutil.Process] = []
        self._signals: list[int] = []
        self._unkillable: list[str] = []
        self._old_handlers: dict[int, object] = {}

    # --- top level -------------------------------------------------------------------------

    def run(self) -> LaunchResult:
        result = LaunchResult(exit_code=1)
        sweep_stale_run_dirs()
        self.run_dir = Path(tempfile.mkdtemp(prefix=f"{RUN_DIR_PREFIX}{os.getpid()}-"))
        self._install_signals()
        try:
            result = self._run(result)
        except _Stop as stop:
            result.exit_code, name = 128 + stop.signum, signal.Signals(stop.signum).name
            result.signal = name
            self._tell_others(f"its launcher was stopped by {name}")
            self.out.say(f"pypto launch: stopped by {name} before the workers ran")
        except LaunchError as e:
            self._tell_others(str(e))
            raise
        finally:
            self._cleanup()
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
        allowed, _ = fork_rule_allows(plan.start_method, plan.platform,
                                      plan.nproc_per_node, dict(plan.base_env))
        self._check_stop()
        self._start_zygote(preload=allowed)
        if plan.nnodes > 1:
            self._rendezvous()
        self.forking = self._zygote_ready(allowed)
        result.start_method = "fork" if self.forking else "spawn"
        attempts = plan.max_restarts + 1
        for attempt in range(attempts):
            self.out.open_logs(attempt)
            self._start_group(attempt, topology)
            end = self._supervise()
            if end.signal is not None:
                result.exit_code = 128 + end.signal
                result.signal = signal.Signals(end.signal).name
                self.out.say(f"pypto launch: stopped by {result.signal}; all workers ended")
                return result
            if end.first is None and end.cause is None:
                if self.control is not None:
                    self.control.send_done()
                result.exit_code = 0
                return result
            if end.cause is not None:
                result.cause = end.cause
                self.out.say(cause_report(end.cause, end.ends, attempt, attempts,
                                          self._unkillable))
            else:
                assert end.first is not None
                result.failures.append(end.first)
                self.out.say(failure_report(end.first, [e for e in end.ends
                                                        if e is not end.first],
                                            attempt, attempts, self._unkillable))
            if end.zygote_died and self.zygote is not None:
                self._drop_zygote()
                self.forking = False
                if attempt + 1 < attempts:
                    self.out.say("pypto launch: the zygote is gone; spawning the workers of "
                                 "the next attempts")
            if self._unkillable or (self.control is not None and self.control.stopped):
                break
            if attempt + 1 < attempts:
                result.restarts = attempt + 1
                self.out.say(f"pypto launch: restarting the local group "
                             f"(restart {attempt + 1} of {plan.max_restarts})")
        result.exit_code = 1
        return result

    def _rendezvous(self) -> None:
        plan = self.plan
        links = rendezvous.meet(plan, self._check_stop, self._warn)
        self.control = ControlChannel(plan.node_rank, plan.nnodes, links, self._warn)

    def _warn(self, text: str) -> None:
        self.out.say(f"pypto launch: warning: {text}")

    def _tell_others(self, why: str) -> None:
        """Ask every other node to stop (multi-node only); `why` says what happened here."""
        if self.control is not None:
            self.control.send_stop(why)

    def _start_zygote(self, preload: bool) -> None:
        """The node's helper: every worker is started below it (see workers.py)."""
        self.zygote = ZygoteClient(dict(self.plan.base_env), self.plan.cwd, preload)
        self._track(self.zygote.pid)

    def _zygote_ready(self, fork_wanted: bool) -> bool:
        """Wait for the helper; whether workers are forked from it. A preloaded one that is
        not safe to fork from is replaced by one that only execs; a helper that does not
        come up leaves the launcher to spawn the workers itself."""
        assert self.zygote is not None
        safe, why_not = self.zygote.wait_ready(ZYGOTE_READY_TIMEOUT, self._check_stop)
        if fork_wanted and not safe:
            self.out.say(f"pypto launch: not forking workers ({why_not}); spawning them")
            if self.zygote.ready is not None:
                self._drop_zygote()
                self._start_zygote(preload=False)
                self.zygote.wait_ready(ZYGOTE_READY_TIMEOUT, self._check_stop)
        if self.zygote.ready is None:
            self._drop_zygote()
            return False
        return fork_wanted and safe

    def _drop_zygote(self) -> None:
        assert self.zygote is not None
        self.zygote.close()
        self.zygote = None

    # --- one attempt -----------------------------------------------------------------------

    def _start_group(self, restart_count: int, topology: Topology | None) -> None:
        plan = self.plan
        self._attempt = restart_count
        self._unkillable = []
        cpus = cpu_sets(plan.nproc_per_node) if plan.cpu_bind else None
        self.workers = []
        self.out.new_attempt()
        for local in range(plan.nproc_per_node):
            self._check_stop()  # the one place a signal interrupts starting
            env = worker_env(plan, local, restart_count, self.run_dir, topology)
            error_file(self.run_dir, restart_count, local).parent.mkdir(parents=True,
                                                                       exist_ok=True)
            out_r, out_w = os.pipe()
            try:
                err_r, err_w = os.pipe()
            except OSError:
                os.close(out_r)
                os.close(out_w)
                raise
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
            if not self.forking:
                request["argv"] = plan.target.command(env.get("PYTHON_EXEC", sys.executable))
            try:
                pid = self.zygote.fork(request, fds)
                return Worker(local, rank, pid, out_r, err_r, time.time())
            except OSError as e:
                # Workers forked before this one die with the zygote (parent-death signal);
                # the supervisor finds them gone. This one and the rest are spawned.
                self.out.say(f"pypto launch: the zygote failed while starting local rank "
                             f"{local} ({e}); spawning the workers instead")
                self._drop_zygote()
                self.forking = False
        try:
            popen = spawn_worker(plan.target, env, plan.cwd, fds, cpus)
        except OSError as e:
            raise LaunchError(f"cannot start the worker of local rank {local}: {e}",
                              code=1) from None
        return Worker(local, rank, popen.pid, out_r, err_r, time.time(), popen=popen)

    def _supervise(self) -> AttemptEnd:
        """Watch the group until every worker ended (or could not be killed)."""
        sel = selectors.DefaultSelector()
        by_pid = {w.pid: w for w in self.workers}
        for w in self.workers:
            sel.register(w.stdout_fd, selectors.EVENT_READ, ("out", w, 1))
            sel.register(w.stderr_fd, selectors.EVENT_READ, ("out", w, 2))
            if w.popen is not None:
                try:
                    sel.register(os.pidfd_open(w.pid), selectors.EVENT_READ, ("pidfd", w, 0))
                except (AttributeError, OSError):
                    pass
        if self.zygote is not None:
            sel.register(self.zygote.fileno(), selectors.EVENT_READ, ("zygote", None, 0))
        if self.control is not None:
            for node, sock in self.control.sockets().items():
                sel.register(sock.fileno(), selectors.EVENT_READ, ("control", None, node))
        first: WorkerEnd | None = None
        ends: dict[int, WorkerEnd] = {}
        stop: int | None = None
        cause: str | None = None
        zygote_died = False
        kill_at: float | None = None
        give_up_at: float | None = None
        drain_until: float | None = None
        next_check = time.monotonic() + 1.0
        try:
            while True:
                if self.zygote is not None:  # exits that arrived while we were forking
                    for pid, status in self.zygote.take_queued():
                        if pid in by_pid:
                            by_pid[pid].set_status(status)
                for key, _ in sel.select(timeout=POLL):
                    kind, w, num = key.data
                    if kind == "zygote":
                        assert self.zygote is not None
                        for pid, status in self.zygote.drain():
                            if pid in by_pid:
                                by_pid[pid].set_status(status)
                        if self.zygote.closed:
                            sel.unregister(key.fd)
                            lost = self._zygote_lost()
                            zygote_died = True
                            if first is None and stop is None and cause is None:
                                cause = lost
                                self._tell_others(f"{lost} (node {self.plan.node_rank})")
                                kill_at = time.monotonic()
                    elif kind == "control":
                        assert self.control is not None
                        remote = self.control.read(num)
                        if num not in self.control.sockets():
                            sel.unregister(key.fd)
                        if remote and first is None and stop is None and cause is None:
                            cause = f"node {remote.node} failed: {remote.why}"
                            self._signal_group(signal.SIGTERM)
                            kill_at = time.monotonic() + self.plan.grace_period
                    elif kind == "pidfd":
                        sel.unregister(key.fd)
                        os.close(key.fd)
                    else:
                        w.read_pipe(sel, self.out, num, key.fd)
                for w in self.workers:
                    if w.popen is not None and w.returncode is None:
                        code = w.popen.poll()
                        if code is not None:
                            w.returncode, w.ended = code, time.time()
                now = time.monotonic()
                if now >= next_check:  # forked workers whose end the zygote never reported
                    self._find_unreported_ends(now)
                    next_check = now + 1.0
                batch = []
                for w in self.workers:
                    if w.returncode is not None and w.local_rank not in ends:
                        w.drain_pipes(sel, self.out, close=False)
                        ends[w.local_rank] = self._end_of(w)
                        batch.append(ends[w.local_rank])
                failed = [e for e in batch if e.returncode != 0]
                if failed and first is None and stop is None and cause is None:
                    first = min(failed, key=_root_cause_order)
                    self._tell_others(first.summary())
                    self._signal_group(signal.SIGTERM)
                    kill_at = now + self.plan.grace_period
                if self._signals and stop is None:
                    stop = self._signals[0]
                    self._tell_others(f"its launcher got {signal.Signals(stop).name}")
                    self._signal_group(stop)
                    kill_at = now + self.plan.grace_period
                if stop is not None and len(self._signals) > 1:
                    kill_at = min(kill_at or now, now)
                if kill_at is not None and now >= kill_at:
                    self._signal_group(signal.SIGKILL)
                    kill_at = None
                    give_up_at = now + KILL_WAIT
                if len(ends) == len(self.workers):
                    drain_until = drain_until or now + DRAIN_AFTER_EXIT
                    if now >= drain_until or self._only_control(sel):
                        break
                elif give_up_at is not None and now >= give_up_at:
                    self._give_up(ends)
                    break
        finally:
            for key in list(sel.get_map().values()):
                if key.data[0] in ("out", "pidfd"):
                    os.close(key.fd)
            sel.close()
            for w in self.workers:
                self.out.close_stream(w.local_rank, 1)
                self.out.close_stream(w.local_rank, 2)
            self._kill_leftovers()
        order = sorted(ends.values(), key=lambda e: e.time)
        return AttemptEnd(first, order, stop, cause, zygote_died)

    def _only_control(self, sel: selectors.BaseSelector) -> bool:
        return all(key.data[0] != "out" for key in sel.get_map().values())

    def _find_unreported_ends(self, now: float) -> None:
        """A forked worker's exit is normally reported by the zygote. One that has been dead
        (gone or a zombie) for REPORT_WAIT seconds without a report (the zygote is stopped,
        wedged or gone) is taken as ended, with its status if we can still reap it."""
        for w in self.workers:
            if w.popen is not None or w.returncode is not None:
                continue
            if _running(w.pid):
                continue
            w.dead_since = w.dead_since or now
            if now - w.dead_since >= REPORT_WAIT:
                self._end_unreported(w)

    def _end_unreported(self, w: Worker) -> None:
        try:  # an orphan re-parented to us (subreaper): its real status
            pid, status = os.waitpid(w.pid, os.WNOHANG)
        except ChildProcessError:
            pid, status = 0, 0
        if pid == w.pid:
            w.set_status(status)
        else:
            w.returncode, w.ended, w.status_unknown = 1, time.time(), True

    def _give_up(self, ends: dict[int, WorkerEnd]) -> None:
        """KILL_WAIT after SIGKILL: end what is dead, name what is not, stop waiting."""
        for w in self.workers:
            if w.local_rank in ends:
                continue
            if _running(w.pid):
                self._unkillable.append(f"rank {w.rank} (pid {w.pid})")
                continue
            self._end_unreported(w)
            ends[w.local_rank] = self._end_of(w)

    def _end_of(self, w: Worker) -> WorkerEnd:
        assert w.returncode is not None
        restart = self._attempt
        error = read_error_file(error_file(self.run_dir, restart, w.local_rank))
        return WorkerEnd(rank=w.rank, local_rank=w.local_rank, node=self.plan.node_rank,
                         returncode=w.returncode, time=w.ended or time.time(),
                         restart_count=restart, tail=tuple(self.out.tails[w.local_rank]),
                         error=error, status_unknown=w.status_unknown)

    def _signal_group(self, sig: int) -> None:
        """Signal every running worker's process group: each process gets `sig` once."""
        for w in self.workers:
            if w.returncode is None:
                tree.signal_group_once(w.pid, sig)

    def _zygote_lost(self) -> str:
        """The zygote's socket closed: it died, and its workers with it (parent-death
        signal). Returns what happened, for the report."""
        assert self.zygote is not None
        try:
            code = self.zygote.proc.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            code = None
        for w in self.workers:
            if w.returncode is None and w.popen is None:
                w.returncode, w.ended = -signal.SIGKILL, time.time()
        how = describe_exit(code) if code is not None else "closed its socket"
        return (f"the zygote (pid {self.zygote.pid}) {how}; the workers started by it "
                "died with it")

    def _kill_leftovers(self) -> None:
        """Kill every process left in this attempt's tree (grandchildren, daemons)."""
        roots: list[psutil.Process] = [p for p in self._procs
                                       if self.zygote is None or p.pid != self.zygote.pid]
        for w in self.workers:
            if w.popen is not None and w.popen.poll() is None:
                w.popen.kill()
                try:
                    w.popen.wait(KILL_WAIT)
                except subprocess.TimeoutExpired:
                    pass
        roots += self._zygote_children()
        self._report_unkillable(tree.kill_tree(roots, [w.pid for w in self.workers]))

    def _report_unkillable(self, procs: list[psutil.Process]) -> list[str]:
        names = []
        for proc in procs:
            try:
                names.append(f"pid {proc.pid} ({' '.join(proc.cmdline())[:80]})")
            except psutil.Error:
                names.append(f"pid {proc.pid}")
        if names:
            self.out.say("pypto launch: could not kill (still running after SIGKILL): "
                         + ", ".join(names))
        return names

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

    def _on_signal(self, signum: int, _frame: object) -> None:
        """Only record it: the supervise loop and the start-up safe points act on it."""
        self._signals.append(signum)

    def _check_stop(self) -> None:
        """A safe point during start-up: unwind (and clean up) if a signal arrived."""
        if self._signals:
            raise _Stop(self._signals[0])

    def _cleanup(self) -> None:
        """Kill and reap the whole tree; name the processes that could not be killed."""
        try:  # the tree first: orphans adopted by the zygote die before it does
            left = tree.kill_tree([p for p in self._procs if self.zygote is None
                                   or p.pid != self.zygote.pid]
                                  + self._zygote_children(), [w.pid for w in self.workers])
            if self.zygote is not None:
                self.zygote.close()
            left += tree.kill_tree(self._procs, [w.pid for w in self.workers],
                                   adopt_children_of=os.getpid() if self.subreaper else None)
            self._report_unkillable(left)
        finally:
            if self.control is not None:
                self.control.close()
            self.out.close()
            shutil.rmtree(self.run_dir, ignore_errors=True)
            for sig, handler in self._old_handlers.items():
                signal.signal(sig, handler)


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def sweep_stale_run_dirs() -> None:
    """Remove run directories left by launchers that were killed (kill -9 runs no cleanup):
    those whose owner pid (in the name) is no longer running."""
    for path in Path(tempfile.gettempdir()).glob(f"{RUN_DIR_PREFIX}*"):
        pid = path.name[len(RUN_DIR_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and not psutil.pid_exists(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


__all__ = ["LaunchResult", "Supervisor", "WorkerEnd"]
