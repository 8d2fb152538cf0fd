"""Starting one worker: forked from the zygote (fast) or spawned as a fresh interpreter.

Both go through the zygote, the node's helper (zygote.py): with torch preloaded it forks
workers, without a preload it fork-execs fresh interpreters, so every worker and all its
descendants live below a process that tears them down even after a kill -9 of the
launcher. Only when that helper cannot run does the launcher spawn workers itself.

The fork rule: fork from the zygote only when (1) the start method is `auto` or `fork`,
(2) the platform is cpu (cuda/npu spawn unless `fork` is asked for explicitly, since their
runtimes' fork-safety is not something this machine can show), (3) the node runs more than
one worker (one worker gains nothing), and (4) the zygote reports, after importing torch,
exactly one OS thread and no initialised CUDA. Otherwise every worker is a fresh
`python SCRIPT` / `python -m MODULE`, exactly as torchrun starts it.
"""

from __future__ import annotations

import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from . import zygote as zygote_protocol
from .prctl import die_with_parent
from .target import Target

POLL = 0.1  # seconds between signal checks while waiting for the zygote
READ_CHUNK = 65536
MAX_DRAIN_READS = 64  # an ended worker's leftovers; a grandchild holding the pipe may not end
FORK_REPLY_TIMEOUT = 30.0


@dataclass
class Worker:
    """One running worker of this node."""

    local_rank: int
    rank: int
    pid: int
    stdout_fd: int
    stderr_fd: int
    started: float
    popen: subprocess.Popen | None = None
    returncode: int | None = None
    ended: float | None = None
    open_fds: set[int] = field(default_factory=set)
    dead_since: float | None = None  # forked: first seen dead without the zygote's report
    status_unknown: bool = False

    def __post_init__(self) -> None:
        self.open_fds = {self.stdout_fd, self.stderr_fd}

    def set_status(self, status: int) -> None:
        """Record a raw wait status (from the zygote) as a Popen-style return code."""
        self.returncode = os.waitstatus_to_exitcode(status)
        self.ended = time.time()

    # Its output pipes, read without blocking into `out` (the job's OutputRouter or the
    # service's ServiceOutput: feed / close_stream by local rank and stream 1 or 2).

    def read_pipe(self, sel: selectors.BaseSelector, out: PipeSink, num: int, fd: int) -> None:
        """One read of a ready pipe: hand on what came, or close the pipe at its end."""
        try:
            data = os.read(fd, READ_CHUNK)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            out.feed(self.local_rank, num, data)
        else:
            self.close_pipe(sel, out, num, fd)

    def close_pipe(self, sel: selectors.BaseSelector, out: PipeSink, num: int, fd: int) -> None:
        if fd not in self.open_fds:
            return
        sel.unregister(fd)
        os.close(fd)
        self.open_fds.discard(fd)
        out.close_stream(self.local_rank, num)

    def drain_pipes(self, sel: selectors.BaseSelector, out: PipeSink, close: bool) -> None:
        """Read what the ended worker left in its pipes, so its tail is complete; with
        `close`, close them after (else they close at their end, as read_pipe finds it)."""
        for fd, num in ((self.stdout_fd, 1), (self.stderr_fd, 2)):
            for _ in range(MAX_DRAIN_READS):
                if fd not in self.open_fds:
                    break
                try:
                    data = os.read(fd, READ_CHUNK)
                except BlockingIOError:
                    break
                except OSError:
                    data = b""
                if not data:
                    self.close_pipe(sel, out, num, fd)
                    break
                out.feed(self.local_rank, num, data)
            if close:
                self.close_pipe(sel, out, num, fd)


class PipeSink(Protocol):
    """Where a worker's output goes."""

    def feed(self, local_rank: int, num: int, data: bytes) -> None: ...

    def close_stream(self, local_rank: int, num: int) -> None: ...


def fork_rule_allows(method: str, platform: str, nproc: int,
                     env: dict[str, str] | None = None) -> tuple[bool, str]:
    """Whether to try the zygote at all, and why not."""
    if method == "spawn":
        return False, "start method spawn was asked for"
    if env and env.get("PYTHON_EXEC"):
        return False, "PYTHON_EXEC names another interpreter"
    if nproc < 2 and method != "fork":
        return False, "one worker per node gains nothing from the zygote"
    if platform != "cpu" and method != "fork":
        return False, f"platform {platform} spawns unless the start method is fork"
    return True, ""


class ZygoteClient:
    """The launcher's side of the zygote: start it, wait for its verdict, ask for forks.
    `preload`: import torch there to fork workers from it; without, it only execs them."""

    def __init__(self, env: dict[str, str], cwd: str, preload: bool = True):
        self._sock, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)  # large envs
        zenv = dict(env)
        zenv["OMP_NUM_THREADS"] = "1"  # no OpenMP pool in the parent; workers set their own
        if not preload:
            zenv[zygote_protocol.PRELOAD_ENV] = ""
        self.preloaded = preload
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pypto_serving.launcher.zygote", str(child.fileno()),
             str(os.getpid())],
            pass_fds=[child.fileno()], env=zenv, cwd=cwd, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        child.close()
        self.exits: list[tuple[int, int]] = []
        self.ready: dict | None = None
        self.closed = False

    @property
    def pid(self) -> int:
        return self.proc.pid

    def fileno(self) -> int:
        return self._sock.fileno()

    def wait_ready(self, timeout: float,
                   check: Callable[[], None] = lambda: None) -> tuple[bool, str]:
        """Wait until the zygote has preloaded; (fork_safe, reason). `check` is called
        every POLL seconds meanwhile (the launcher raises there on a signal)."""
        deadline = time.monotonic() + timeout
        message = None
        try:
            while True:
                check()
                left = deadline - time.monotonic()
                if left <= 0:
                    return False, f"the zygote was not ready within {timeout:g}s"
                self._sock.settimeout(min(left, POLL))
                try:
                    message = self._next()
                    break
                except TimeoutError:
                    continue
                except OSError as e:
                    return False, f"the zygote did not start ({e})"
        finally:
            self._sock.settimeout(None)
        if message is None or message.get("op") != "ready":
            return False, "the zygote exited while preloading"
        self.ready = message
        return bool(message["fork_safe"]), message.get("reason", "")

    def fork(self, request: dict, fds: tuple[int, int]) -> int:
        """Ask for one worker; its pid. OSError when the zygote is gone or does not answer
        within FORK_REPLY_TIMEOUT (stopped or wedged)."""
        self._sock.settimeout(FORK_REPLY_TIMEOUT)
        try:
            zygote_protocol.send(self._sock, {"op": "fork", **request}, fds)
            while True:
                try:
                    message = self._next()
                except TimeoutError:
                    raise OSError(f"no answer within {FORK_REPLY_TIMEOUT:g}s") from None
                if message is None:
                    raise OSError("the zygote exited")
                if message["op"] == "forked":
                    return int(message["pid"])
                self._note(message)
        finally:
            self._sock.settimeout(None)

    def take_queued(self) -> list[tuple[int, int]]:
        """Exit reports that arrived while waiting for a fork reply."""
        exits, self.exits = self.exits, []
        return exits

    def drain(self) -> list[tuple[int, int]]:
        """Exit reports received so far: (pid, raw status). Non-blocking; EOF raises."""
        self._sock.setblocking(False)
        try:
            while True:
                try:
                    message = self._next()
                except BlockingIOError:
                    break
                if message is None:
                    self.closed = True
                    break
                self._note(message)
        finally:
            self._sock.setblocking(True)
        exits, self.exits = self.exits, []
        return exits

    def _next(self) -> dict | None:
        message, fds = zygote_protocol.receive(self._sock)
        for fd in fds:
            os.close(fd)
        return message

    def _note(self, message: dict) -> None:
        if message.get("op") == "exited":
            self.exits += [(int(pid), int(status)) for pid, status in message["ends"]]

    def close(self, timeout: float = 2.0) -> None:
        """Tell the zygote to stop (it kills what is left of its workers) and wait for it."""
        try:
            self._sock.close()
        except OSError:
            pass
        if self.ready is None:  # still importing torch: nothing to wind down
            self.proc.kill()
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def spawn_worker(target: Target, env: dict[str, str], cwd: str, fds: tuple[int, int],
                 cpus: list[int] | None) -> subprocess.Popen:
    """A fresh interpreter for one worker, in its own process group, dying with us."""
    parent = os.getpid()

    def setup() -> None:  # runs in the child between fork and exec
        os.setpgid(0, 0)
        die_with_parent(parent, signal.SIGKILL)
        if cpus:
            os.sched_setaffinity(0, cpus)

    return subprocess.Popen(
        target.command(env.get("PYTHON_EXEC", sys.executable)), env=env, cwd=cwd,
        stdin=subprocess.DEVNULL, stdout=fds[0], stderr=fds[1], preexec_fn=setup,
    )
