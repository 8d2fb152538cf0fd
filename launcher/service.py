"""ServiceLaunch: a launch that hosts a service, one restart domain per worker group.

Each restart domain of core's topology (`Topology.restart_domains()`: a DP replica without
EP, else the world; the world without a config) is a worker group with its own torch world
(its own MASTER_PORT; RANK/WORLD_SIZE group-local, PYPTO_RANK global). Groups are
supervised apart: a worker that dies, exits 0, or stops heartbeating tears down and
restarts its own group (up to `max_restarts`, with backoff) while the others run on; a
group whose restarts ran out ends the launch (exit 1). The policy of a group lives in
group_policy.py; this module does the mechanics (zygote forks, pipes, health socket,
teardown) in one loop on its own thread and hands the caller LaunchEvents in order.
"""

from __future__ import annotations

import dataclasses
import os
import queue
import secrets
import selectors
import shutil
import signal
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import psutil

from . import rendezvous, tree
from .devices import cpu_sets
from .env import config_file, error_file, worker_env
from .errors import LaunchError
from .group_channel import GroupChannel
from .group_policy import GroupPolicy, GroupState, LaunchEvent
from .group_workers import GroupWorkers, running
from .health import INTERVAL_ENV, RANK_ENV, SOCKET_ENV, TOKEN_ENV
from .health_server import HealthServer
from .logfile import DEFAULT_BACKUPS, DEFAULT_MAX_BYTES
from .plan import MAX_RESTARTS, LaunchSpec, Plan, make_plan, pick_free_port, whole_number
from .report import WorkerEnd, read_error_file
from .service_output import ServiceOutput
from .supervisor import (
    REPORT_WAIT,
    RUN_DIR_PREFIX,
    ZYGOTE_READY_TIMEOUT,
    sweep_stale_run_dirs,
)
from .workers import Worker, ZygoteClient, fork_rule_allows
from .zygote import DEFAULT_PRELOAD, PRELOAD_ENV

if TYPE_CHECKING:
    from ..core.topology import Topology

POLL = 0.05
# What a service's zygote imports before forking (unless PYPTO_ZYGOTE_PRELOAD says
# otherwise): torch and the executor a replica worker runs, so a restarted worker imports
# neither again (scripts/bench_restart.py: about 2.5x faster restarts than torch alone).
SERVICE_PRELOAD = (f"{DEFAULT_PRELOAD},pypto_serving.executor.distributed,"
                   "pypto_serving.executor.runner,pypto_serving.launcher.health")
DEFAULT_HEARTBEAT_TIMEOUT_S = 10.0
DEFAULT_RESTART_BACKOFF_S = 0.5
MAX_ZYGOTES = 4  # zygotes one launch starts at most (the first and three replacements)


@dataclass
class ServiceResult:
    """How a service launch ended: exit_code 0 when stopped by its caller, 1 when a group's
    restarts ran out (or another node stopped it, or the launch could not go on), 128+N on
    signal N (CLI); `cause` says why in one line, naming the group and rank."""

    exit_code: int
    restarts: int = 0
    failures: list[WorkerEnd] = field(default_factory=list)
    start_method: str = "spawn"
    fork_refused: str = ""
    cause: str | None = None
    signal: str | None = None
    wall_s: float = 0.0
    unkillable: list[str] = field(default_factory=list)


def service_plan(spec: LaunchSpec) -> Plan:
    """make_plan for a service launch: restarts are coordinated across nodes here, so
    --max-restarts is allowed with --nnodes > 1."""
    whole_number(spec.max_restarts, "--max-restarts", 0, MAX_RESTARTS)
    plan = make_plan(dataclasses.replace(spec, max_restarts=0))
    return dataclasses.replace(plan, max_restarts=spec.max_restarts)


class _Stop(BaseException):
    """stop() was called while the launch was still starting: unwind at a safe point."""


@dataclass
class _Group:
    """One worker group on this node: its policy, its processes, its health bookkeeping."""

    policy: GroupPolicy
    procs: GroupWorkers
    locals: tuple[int, ...]  # this node's local ranks of the group
    addr: str
    port: int
    tokens: dict[int, str] = field(default_factory=dict)  # local rank -> health token
    beats: dict[int, float] = field(default_factory=dict)  # local rank -> last heartbeat
    started: float = 0.0
    restart_at: float | None = None

    @property
    def index(self) -> int:
        return self.policy.index

    @property
    def first(self) -> int:
        return self.policy.ranks[0]

    @property
    def spans_nodes(self) -> bool:
        return len(self.locals) < len(self.policy.ranks)


class ServiceLaunch:
    """Run a plan as a service: groups supervised apart, events for the caller.

    `start()` returns at once; `next_event(timeout)` yields LaunchEvents in order;
    `stop(grace_s)` tears everything down; `wait()` returns when the launch has ended
    (restarts exhausted, or stopped). Worker lines go to `stdout`/`stderr` as in a plain
    launch.
    """

    def __init__(self, plan: Plan, *, heartbeat_timeout_s: float = DEFAULT_HEARTBEAT_TIMEOUT_S,
                 restart_backoff_s: float = DEFAULT_RESTART_BACKOFF_S,
                 ready_timeout_s: float | None = None, max_log_bytes: int = DEFAULT_MAX_BYTES,
                 log_backups: int = DEFAULT_BACKUPS, stdout: TextIO | None = None,
                 stderr: TextIO | None = None):
        if heartbeat_timeout_s <= 0 or restart_backoff_s < 0:
            raise LaunchError("--heartbeat-timeout must be > 0 and --restart-backoff >= 0 "
                              "(seconds)")
        if ready_timeout_s is not None and ready_timeout_s <= 0:
            raise LaunchError("--ready-timeout must be > 0 seconds")
        if max_log_bytes < 1024:
            raise LaunchError(f"--max-log-bytes {max_log_bytes} is too small; give at "
                              "least 1024")
        self.plan = plan
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self.heartbeat_interval_s = max(0.02, min(1.0, heartbeat_timeout_s / 5))
        self.restart_backoff_s = restart_backoff_s
        self.ready_timeout_s = ready_timeout_s
        self.out = ServiceOutput(plan, stdout, stderr, max_log_bytes, log_backups)
        self._events: queue.Queue[LaunchEvent | None] = queue.Queue()
        self._ended = threading.Event()
        self._thread = threading.Thread(target=self._main, name="pypto-service", daemon=True)
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._stop_grace: float | None = None
        self._stopping = False
        self._applied_grace = float("inf")
        self._started = False
        self.result = ServiceResult(exit_code=1)
        self.zygote: ZygoteClient | None = None
        self.channel: GroupChannel | None = None
        self.health: HealthServer | None = None
        self.groups: list[_Group] = []
        self._sel = selectors.DefaultSelector()
        self._by_local: dict[int, _Group] = {}
        self._conn_local: dict[int, int] = {}  # health connection fd -> local rank
        self._pending: dict[tuple[int, int], list[dict]] = {}  # (group, attempt) -> messages
        self._zygote_procs: list[psutil.Process] = []  # every zygote started, for cleanup
        self._next_zygote: ZygoteClient | None = None  # a replacement, still preloading
        self.run_dir: Path | None = None

    # --- the caller's side ---------------------------------------------------------------

    def start(self) -> None:
        """Check what can fail at once (raises LaunchError), then supervise on a thread."""
        if self._started:
            raise RuntimeError("ServiceLaunch.start() was called twice")
        self._started = True
        try:
            self._prepare()
        except BaseException:
            self._cleanup()
            self._ended.set()
            raise
        self._thread.start()

    def next_event(self, timeout: float | None = None) -> LaunchEvent | None:
        """The next event, waiting up to `timeout` seconds; None when none came in time or
        the launch has ended and every event was taken."""
        try:
            event = self._events.get(timeout=timeout)
        except queue.Empty:
            return None
        if event is None:  # the end marker: leave it for later callers
            self._events.put(None)
        return event

    def stop(self, grace_s: float | None = None) -> ServiceResult:
        """Stop every group (SIGTERM, `grace_s` (default the plan's grace period), then
        SIGKILL), reap everything, and return the result."""
        self.request_stop(grace_s)
        return self.wait()

    def request_stop(self, grace_s: float | None = None) -> None:
        """stop() without waiting; a later call with a shorter grace shortens it."""
        grace = self.plan.grace_period if grace_s is None else grace_s
        if self._stop_grace is None or grace < self._stop_grace:
            self._stop_grace = grace
        self._wake()

    def wait(self, timeout: float | None = None) -> ServiceResult:
        """The result once the launch has ended; TimeoutError if it has not within
        `timeout` seconds."""
        if self._thread.is_alive():
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise TimeoutError(f"the service launch did not end within {timeout}s")
        return self.result

    @property
    def ended(self) -> bool:
        return self._ended.is_set()

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass

    # --- set-up ---------------------------------------------------------------------------

    def _prepare(self) -> None:
        plan = self.plan
        for warning in plan.warnings:
            self.out.say(f"pypto launch: warning: {warning}")
        sweep_stale_run_dirs()
        self.run_dir = Path(tempfile.mkdtemp(prefix=f"{RUN_DIR_PREFIX}{os.getpid()}-"))
        self.topology = plan.topology()
        if plan.config is not None:
            config_file(self.run_dir).write_text(plan.config.model_dump_json())
        if plan.nnodes == 1:
            rendezvous.check_port_free(plan.master_port)
        self.health = HealthServer(self.run_dir)
        self._sel.register(self.health.fileno(), selectors.EVENT_READ, ("listen", None))
        self._sel.register(self._wake_r, selectors.EVENT_READ, ("wake", None))
        self.groups = self._make_groups(self.topology)
        for g in self.groups:
            for local in g.locals:
                self._by_local[local] = g
        self.out.open_logs()

    def _make_groups(self, topology: Topology | None) -> list[_Group]:
        plan = self.plan
        domains = topology.restart_domains() if topology is not None else (
            range(plan.world_size),)
        mine = range(plan.global_rank(0), plan.global_rank(plan.nproc_per_node))
        groups = []
        for index, ranks in enumerate(domains):
            local = tuple(r - mine.start for r in ranks if r in mine)
            if not local:
                continue
            policy = GroupPolicy(index, tuple(ranks), plan.max_restarts, self.restart_backoff_s)
            if plan.nnodes > 1:  # every node derives the same port for a group
                port = plan.master_port + index
            else:
                port = plan.master_port if 0 in ranks else 0
            procs = GroupWorkers(plan, self.out, self._sel, self._zygote_failed)
            groups.append(_Group(policy, procs, local, plan.master_addr, port))
        return groups

    # --- the supervision thread --------------------------------------------------------------

    def _main(self) -> None:
        try:
            self._run()
        except _Stop:
            for g in self.groups:
                self._emit(g.policy.stop())
            self.result.exit_code = 0
        except LaunchError as e:
            self.result.exit_code, self.result.cause = e.code, str(e)
            self.out.say(f"pypto launch: {e}")
            if self.channel is not None:
                self.channel.send_stop(str(e))
        except BaseException as e:  # noqa: B036 - a launcher bug must still clean up
            self.result.exit_code, self.result.cause = 1, f"{type(e).__name__}: {e}"
            self.out.say(f"pypto launch: internal error: {type(e).__name__}: {e}")
            raise
        finally:
            self._cleanup()
            for g in self.groups:  # whatever ended the launch, every group ends stopped
                if g.policy.state is not GroupState.STOPPED:
                    self._emit(g.policy.stop())
            self._ended.set()
            self._events.put(None)

    def _run(self) -> None:
        plan = self.plan
        start = time.monotonic()
        allowed, why_not = fork_rule_allows(plan.start_method, plan.platform,
                                            plan.nproc_per_node, dict(plan.base_env))
        if allowed:
            self.zygote = self._new_zygote()
        if plan.nnodes > 1:
            self._rendezvous()
        if self.zygote is not None:
            safe, why_not = self.zygote.wait_ready(ZYGOTE_READY_TIMEOUT, self._check_stop)
            if not safe:
                self.out.say(f"pypto launch: not forking workers ({why_not}); spawning them")
                self._drop_zygote()
        self.result.start_method = "fork" if self.zygote is not None else "spawn"
        self.result.fork_refused = why_not
        if self.zygote is not None:
            self._sel.register(self.zygote.fileno(), selectors.EVENT_READ, ("zygote", None))
        for g in self.groups:
            self._start_group(g)
        next_check = time.monotonic() + 1.0
        while True:
            self._check_stop_request()
            for key, _ in self._sel.select(timeout=POLL):
                self._handle(key)
            now = time.monotonic()
            self._poll_ends()
            if now >= next_check:
                self._find_unreported_ends(now)
                self._close_stale_health(now)
                next_check = now + 1.0
            for g in self.groups:
                self._advance(g, now)
            if all(g.policy.state is GroupState.STOPPED and not g.procs.alive()
                   for g in self.groups):
                break
        self.result.wall_s = time.monotonic() - start
        exhausted = [g for g in self.groups if g.policy.exhausted]
        remote = self.channel.stopped if self.channel is not None else None
        if exhausted:
            f = exhausted[0].policy.failure
            assert f is not None
            self.result.exit_code = 1
            self.result.cause = f"group {f.group}: {f.why()}; no restarts left"
        elif remote is not None and self._stop_grace is None:
            self.result.exit_code = 1
            self.result.cause = f"node {remote.node} stopped: {remote.why}"
        else:
            self.result.exit_code = 0

    def _check_stop(self) -> None:
        """A safe point during start-up: unwind when stop() was called."""
        if self._stop_grace is not None:
            raise _Stop()

    def _rendezvous(self) -> None:
        plan = self.plan
        links = rendezvous.meet(plan, self._check_stop,
                                lambda text: self.out.say(f"pypto launch: warning: {text}"))
        self.channel = GroupChannel(plan.node_rank, plan.nnodes, links,
                                    lambda text: self.out.say(f"pypto launch: warning: {text}"))
        addrs = self.channel.share_addresses(plan.master_addr, plan.rdzv_timeout,
                                             self._check_stop)
        for g in self.groups:
            g.addr = addrs.get(g.first // plan.nproc_per_node, plan.master_addr)
        for message in self.channel.take_early():
            self._remote(message)
        for node, sock in self.channel.sockets().items():
            self._sel.register(sock.fileno(), selectors.EVENT_READ, ("control", node))

    # --- starting a group -----------------------------------------------------------------

    def _start_group(self, g: _Group) -> None:
        policy = g.policy
        attempt = policy.attempt
        self._emit(policy.start())
        plan = self.plan
        port = g.port or pick_free_port()
        cpus = cpu_sets(plan.nproc_per_node) if plan.cpu_bind else None
        self._ensure_zygote()
        g.procs.reset()
        g.tokens, g.beats, g.restart_at = {}, {}, None
        g.started = time.monotonic()
        assert self.run_dir is not None and self.health is not None
        for local in g.locals:
            if attempt:
                self.out.mark_restart(local, attempt)
            rank = plan.global_rank(local)
            token = secrets.token_hex(16)
            env = worker_env(plan, local, attempt, self.run_dir, self.topology)
            env.update({
                "RANK": str(rank - g.first), "WORLD_SIZE": str(len(policy.ranks)),
                "ROLE_RANK": str(rank - g.first), "ROLE_WORLD_SIZE": str(len(policy.ranks)),
                "MASTER_ADDR": g.addr, "MASTER_PORT": str(port),
                RANK_ENV: str(rank), "PYPTO_WORLD_SIZE": str(plan.world_size),
                "PYPTO_GROUP": str(g.index),
                SOCKET_ENV: self.health.address, TOKEN_ENV: token,
                INTERVAL_ENV: f"{self.heartbeat_interval_s:g}",
            })
            error_file(self.run_dir, attempt, local).parent.mkdir(parents=True, exist_ok=True)
            g.procs.start(local, rank, env, cpus[local] if cpus else None, self.zygote)
            g.tokens[local] = token
        for message in self._pending.pop((g.index, attempt), []):
            self._remote(message)

    # --- events from the selector --------------------------------------------------------

    def _handle(self, key: selectors.SelectorKey) -> None:
        kind, data = key.data
        if kind == "out":
            worker, num = data
            self._by_local[worker.local_rank].procs.read(worker, num, key.fd)
        elif kind == "wake":
            try:
                os.read(self._wake_r, 4096)
            except BlockingIOError:
                pass
        elif kind == "listen":
            assert self.health is not None
            for fd in self.health.accept():
                self._sel.register(fd, selectors.EVENT_READ, ("health", None))
        elif kind == "health":
            self._health(key.fd)
        elif kind == "zygote":
            assert self.zygote is not None
            self._note_exits(self.zygote.drain())
            if self.zygote.closed:
                self._zygote_lost()
        elif kind == "control":
            self._control(data, key.fd)

    def _health(self, fd: int) -> None:
        assert self.health is not None
        for note in self.health.read(fd):
            if note.kind == "closed":
                self._sel.unregister(fd)
                self._conn_local.pop(fd, None)
                return
            if note.kind == "ready":
                self._on_ready(fd, note.rank, note.token, note.payload or {})
            elif note.kind == "beat":
                local = self._conn_local.get(fd)
                g = self._by_local.get(local) if local is not None else None
                if g is not None and local in g.beats:
                    g.beats[local] = time.monotonic()

    def _on_ready(self, fd: int, rank: int | None, token: str, payload: dict) -> None:
        assert self.health is not None
        local = (rank - self.plan.global_rank(0)) if rank is not None else -1
        g = self._by_local.get(local)
        if g is None or not secrets.compare_digest(g.tokens.get(local, ""), token):
            self._sel.unregister(fd)  # not a worker of this attempt (stale, or a stranger)
            self.health.close(fd)
            return
        self._conn_local[fd] = local
        g.beats[local] = time.monotonic()
        self._emit(g.policy.worker_ready(rank, payload))
        if self.channel is not None and g.spans_nodes:
            self.channel.send_ready(g.index, g.policy.attempt, rank, payload)

    def _control(self, node: int, fd: int) -> None:
        assert self.channel is not None
        messages = self.channel.read(node)
        if node not in self.channel.sockets():
            self._sel.unregister(fd)
        for message in messages:
            self._remote(message)
        if self.channel.stopped is not None and not self._stopping:
            self._stop_all(self.plan.grace_period)

    def _remote(self, message: dict) -> None:
        """Another node's word on a group that spans nodes: for the current attempt it
        applies now; for a later one (this node is still tearing down) once it starts."""
        g = next((g for g in self.groups if g.index == message.get("group")), None)
        attempt = message.get("attempt")
        if g is None or not isinstance(attempt, int) or attempt < g.policy.attempt:
            return
        if attempt > g.policy.attempt or not g.policy.running:
            if attempt > g.policy.attempt or g.policy.state is not GroupState.FAILED:
                self._pending.setdefault((g.index, attempt), []).append(message)
            return
        if message.get("op") == "ready":
            self._emit(g.policy.worker_ready(int(message["rank"]),
                                             dict(message.get("payload") or {})))
        elif message.get("op") == "failed":
            self._fail(g, int(message["rank"]), str(message["cause"]),
                       exit_code=message.get("exit_code"), sig=message.get("signal"),
                       tail=tuple(message.get("log_tail") or ()),
                       node=int(message["node"]), tell=False)

    # --- worker ends ---------------------------------------------------------------------

    def _all_workers(self) -> list[Worker]:
        return [w for g in self.groups for w in g.procs.workers.values()]

    def _note_exits(self, exits: list[tuple[int, int]]) -> None:
        by_pid = {w.pid: w for w in self._all_workers() if w.returncode is None}
        for pid, status in exits:
            if pid in by_pid:
                by_pid[pid].set_status(status)

    def _poll_ends(self) -> None:
        if self.zygote is not None:
            self._note_exits(self.zygote.take_queued())
        for g in self.groups:
            for w in g.procs.newly_ended():
                self._on_end(g, w)

    def _on_end(self, g: _Group, w: Worker) -> None:
        """A worker of `g` ended: a failure when its group was meant to be running."""
        if self._stopping or not g.policy.running:
            return
        code = w.returncode
        assert code is not None
        cause = "exited-0" if code == 0 else ("signal" if code < 0 else "exit")
        self._fail(g, w.rank, cause, exit_code=code if code >= 0 else None,
                   sig=-code if code < 0 else None, tail=tuple(self.out.tails[w.local_rank]),
                   end=self._end_of(g, w))

    def _end_of(self, g: _Group, w: Worker) -> WorkerEnd:
        assert w.returncode is not None and self.run_dir is not None
        error = read_error_file(error_file(self.run_dir, g.policy.attempt, w.local_rank))
        return WorkerEnd(rank=w.rank, local_rank=w.local_rank, node=self.plan.node_rank,
                         returncode=w.returncode, time=w.ended or time.time(),
                         restart_count=g.policy.attempt,
                         tail=tuple(self.out.tails[w.local_rank]), error=error,
                         status_unknown=w.status_unknown)

    def _fail(self, g: _Group, rank: int, cause: str, *, exit_code: int | None = None,
              sig: int | None = None, tail: tuple[str, ...] = (), node: int | None = None,
              end: WorkerEnd | None = None, tell: bool = True) -> None:
        """Record the group's failure (the first one counts), and tear the group down."""
        attempt = g.policy.attempt
        event = g.policy.worker_failed(rank, cause, exit_code=exit_code, signal=sig,
                                       log_tail=tail, node=node if self.plan.nnodes > 1 else None)
        if event is None:
            return
        if event.node is None and self.plan.nnodes > 1:
            event = dataclasses.replace(event, node=self.plan.node_rank)
        self._emit(event)
        if end is not None:
            self.result.failures.append(end)
        if tell and self.channel is not None and g.spans_nodes:
            self.channel.send_failed(g.index, attempt, rank, cause, exit_code, sig, tail)
        g.procs.stop(self.plan.grace_period, now_kill_rank=rank if cause == "hung" else None)

    # --- timers: heartbeats, teardown, restarts ----------------------------------------------

    def _advance(self, g: _Group, now: float) -> None:
        """One group's timers: heartbeat and ready deadlines, teardown, the restart."""
        policy = g.policy
        if policy.running and not self._stopping:
            for local, beat in g.beats.items():
                w = g.procs.workers[local]
                if now - beat > self.heartbeat_timeout_s and w.returncode is None:
                    self._fail(g, w.rank, "hung", tail=tuple(self.out.tails[local]))
                    return
            if (policy.state is GroupState.STARTING and self.ready_timeout_s is not None
                    and now - g.started > self.ready_timeout_s):
                late = next(w for w in g.procs.workers.values() if w.local_rank not in g.beats)
                self._fail(g, late.rank, "hung", tail=tuple(self.out.tails[late.local_rank]))
                return
        g.procs.advance(now)
        if not g.procs.done:
            return
        if policy.state is GroupState.FAILED or (self._stopping and policy.state
                                                 is not GroupState.STOPPED):
            self._finish_teardown(g)
            if self._stopping:
                self._emit(policy.stop())
                return
            self._emit(policy.torn_down())
            if policy.state is GroupState.RESTARTING:
                self.result.restarts += 1
                g.restart_at = now + policy.backoff_s()
            elif policy.exhausted:
                self._stop_all(self.plan.grace_period)
                if self.channel is not None:
                    assert policy.failure is not None
                    self.channel.send_stop(f"group {g.index}: {policy.failure.why()}; "
                                           "no restarts left")
        elif (policy.state is GroupState.RESTARTING and g.restart_at is not None
              and now >= g.restart_at and not self._stopping):
            self._start_group(g)

    def _finish_teardown(self, g: _Group) -> None:
        """Every worker of `g` has ended: kill what they left, drop their connections."""
        g.procs.finish()
        for fd, local in list(self._conn_local.items()):
            if local in g.locals:
                self._sel.unregister(fd)
                del self._conn_local[fd]
                assert self.health is not None
                self.health.close(fd)
        g.beats = {}

    def _find_unreported_ends(self, now: float) -> None:
        """A forked worker dead for REPORT_WAIT s without the zygote's report has ended."""
        for w in self._all_workers():
            if w.popen is not None or w.returncode is not None or running(w.pid):
                continue
            w.dead_since = w.dead_since or now
            if now - w.dead_since >= REPORT_WAIT:
                w.returncode, w.ended, w.status_unknown = 1, time.time(), True

    def _close_stale_health(self, now: float) -> None:
        assert self.health is not None
        for fd in self.health.stale(now):
            self._sel.unregister(fd)
            self.health.close(fd)

    # --- stopping ---------------------------------------------------------------------------

    def _check_stop_request(self) -> None:
        grace = self._stop_grace
        if grace is not None and not self._stopping:
            self._stop_all(grace)
        elif grace is not None and grace < self._applied_grace:  # asked again, sooner
            self._applied_grace = grace
            for g in self.groups:
                if g.procs.kill_at is not None:
                    g.procs.stop(grace)
        if self.channel is not None and self.channel.stopped is not None and not self._stopping:
            self._stop_all(self.plan.grace_period)

    def _stop_all(self, grace: float) -> None:
        """Stop every group: SIGTERM now, SIGKILL after `grace`; groups without workers
        are stopped at once."""
        self._stopping = True
        self._applied_grace = grace
        for g in self.groups:
            if g.policy.state is not GroupState.STOPPED:
                g.procs.stop(grace)
        if self.channel is not None and self.channel.stopped is None:
            self.channel.send_stop("its service launch stopped")

    def _zygote_failed(self, error: OSError) -> None:
        """A fork request failed (the zygote is gone or wedged): this worker is spawned."""
        self.out.say(f"pypto launch: the zygote failed to fork a worker ({error}); "
                     "spawning it")
        self._zygote_lost()

    def _new_zygote(self) -> ZygoteClient:
        """Start a zygote (it preloads on its own; `wait_ready` collects its verdict)."""
        zenv = dict(self.plan.base_env)
        zenv.setdefault(PRELOAD_ENV, SERVICE_PRELOAD)
        zygote = ZygoteClient(zenv, self.plan.cwd)
        try:
            self._zygote_procs.append(psutil.Process(zygote.pid))
        except psutil.Error:
            pass
        return zygote

    def _ensure_zygote(self) -> None:
        """Before a start: adopt the replacement zygote once it is ready (waiting for its
        preload, bounded, costs less than spawning), or give it up and spawn."""
        fresh, self._next_zygote = self._next_zygote, None
        if fresh is None:
            return
        safe, why_not = fresh.wait_ready(ZYGOTE_READY_TIMEOUT)
        if not safe:
            self.out.say(f"pypto launch: the new zygote is not usable ({why_not}); spawning "
                         "workers from now on")
            fresh.close()
            return
        self.zygote = fresh
        self._sel.register(fresh.fileno(), selectors.EVENT_READ, ("zygote", None))
        self.out.say(f"pypto launch: a new zygote (pid {fresh.pid}) is ready; workers are "
                     "forked again")

    def _zygote_lost(self) -> None:
        """The zygote died, and its forked workers with it: they ended by SIGKILL. A new
        zygote is started at once (up to MAX_ZYGOTES in a launch); restarts fork from it
        once it is ready, and spawn when there is none."""
        if self.zygote is None:
            return
        try:
            self._sel.unregister(self.zygote.fileno())
        except (KeyError, ValueError):
            pass
        for w in self._all_workers():
            if w.popen is None and w.returncode is None:
                w.returncode, w.ended = -signal.SIGKILL, time.time()
        self.out.say(f"pypto launch: the zygote (pid {self.zygote.pid}) is gone; the workers "
                     "forked from it died with it")
        self._drop_zygote()
        if len(self._zygote_procs) < MAX_ZYGOTES and not self._stopping:
            self._next_zygote = self._new_zygote()
        else:
            self.out.say("pypto launch: spawning workers from now on")

    def _drop_zygote(self) -> None:
        assert self.zygote is not None
        self.zygote.close()
        self.zygote = None

    def _emit(self, event: LaunchEvent | None) -> None:
        if event is not None:
            self._events.put(event)

    def _cleanup(self) -> None:
        """Kill and reap the whole tree, close every fd, remove the run directory."""
        try:
            roots: list[psutil.Process] = [p for g in self.groups for p in g.procs.procs]
            if self.zygote is not None:
                try:
                    roots += psutil.Process(self.zygote.pid).children()
                except psutil.Error:
                    pass
            pids = [w.pid for w in self._all_workers()]
            left = tree.kill_tree(roots, pids)
            for zygote in (self.zygote, self._next_zygote):
                if zygote is not None:
                    zygote.close()
            self.zygote = self._next_zygote = None
            left += tree.kill_tree(self._zygote_procs, pids)
            self.result.unkillable += [f"pid {p.pid}" for p in left]
        finally:
            for g in self.groups:
                g.procs.close()
                self.result.unkillable += g.procs.unkillable
            if self.health is not None:
                self.health.shutdown()
            if self.channel is not None:
                self.channel.close()
            self._sel.close()
            for fd in (self._wake_r, self._wake_w):
                try:
                    os.close(fd)
                except OSError:
                    pass
            self.out.close()
            if self.run_dir is not None:
                shutil.rmtree(self.run_dir, ignore_errors=True)


__all__ = ["LaunchEvent", "ServiceLaunch", "ServiceResult", "service_plan"]
