"""The life of one worker group of a service launch, as a small explicit state machine.

    STARTING --all ranks ready--> READY
    STARTING | READY --a rank failed or hung--> FAILED
    FAILED --torn down, restarts left--> RESTARTING --backoff over--> STARTING
    FAILED --torn down, no restarts left--> STOPPED
    any --the launch stops--> STOPPED

Every transition returns the LaunchEvent the caller is told of, so events come out in
transition order, one per transition. No processes, sockets or clocks here: the service
loop (service.py) does the mechanics and feeds the facts in.
"""

from __future__ import annotations

import signal as signals
from dataclasses import dataclass, field
from enum import Enum
from types import MappingProxyType
from typing import Any

CAUSES = ("exit", "signal", "hung", "exited-0")
MAX_BACKOFF_S = 30.0


class GroupState(str, Enum):
    STARTING = "starting"
    READY = "ready"
    FAILED = "failed"
    RESTARTING = "restarting"
    STOPPED = "stopped"


ALLOWED: dict[GroupState | None, frozenset[GroupState]] = {
    None: frozenset({GroupState.STARTING, GroupState.STOPPED}),
    GroupState.STARTING: frozenset({GroupState.READY, GroupState.FAILED, GroupState.STOPPED}),
    GroupState.READY: frozenset({GroupState.FAILED, GroupState.STOPPED}),
    GroupState.FAILED: frozenset({GroupState.RESTARTING, GroupState.STOPPED}),
    GroupState.RESTARTING: frozenset({GroupState.STARTING, GroupState.STOPPED}),
    GroupState.STOPPED: frozenset(),
}


@dataclass(frozen=True)
class LaunchEvent:
    """Something that happened to a worker group, for the launch's caller.

    `attempt` counts from 0 (the first start); a "restarting" event carries the attempt
    about to start, so "restarting, attempt 2 of max_restarts 3" reads as restart 2 of 3.
    On "failed" (and a final "stopped" after restarts ran out) `rank`, `cause` ("exit",
    "signal", "hung", "exited-0"), `exit_code` or `signal` and the rank's last log lines
    say what happened. On "ready", `payloads` maps every rank of the group to what it gave
    `launcher.health.report_ready`.
    """

    kind: str
    group: int
    ranks: tuple[int, ...]
    attempt: int
    max_restarts: int
    rank: int | None = None
    cause: str | None = None
    exit_code: int | None = None
    signal: int | None = None
    log_tail: tuple[str, ...] = ()
    payloads: MappingProxyType | dict[int, dict] = field(default_factory=dict)
    node: int | None = None  # the node where the failure happened (multi-node)

    def describe(self) -> str:
        """One line for a person: what happened to which group, and why."""
        first, last = self.ranks[0], self.ranks[-1]
        head = f"group {self.group} (ranks {first}-{last})" if len(self.ranks) > 1 else (
            f"group {self.group} (rank {first})")
        if self.kind == "starting":
            return f"{head} starting (attempt {self.attempt})"
        if self.kind == "ready":
            return f"{head} ready (attempt {self.attempt})"
        if self.kind == "restarting":
            return f"{head} restarting (restart {self.attempt} of {self.max_restarts})"
        why = self.why()
        if self.kind == "failed":
            return f"{head} failed: {why}"
        return f"{head} stopped" + (f": {why}; no restarts left" if why else "")

    def why(self) -> str:
        """What ended the rank ('' when no rank failed)."""
        if self.cause is None:
            return ""
        where = f" on node {self.node}" if self.node is not None else ""
        rank = f"rank {self.rank}{where}"
        if self.cause == "hung":
            return f"{rank} hung (no heartbeat within the deadline)"
        if self.cause == "exited-0":
            return f"{rank} exited with code 0 while the service should run"
        if self.cause == "signal" and self.signal is not None:
            try:
                name = signals.Signals(self.signal).name
            except ValueError:
                name = f"signal {self.signal}"
            return f"{rank} killed by {name}"
        if self.cause == "exit":
            return f"{rank} exited with code {self.exit_code}"
        return f"{rank} {self.cause}"


class TransitionError(RuntimeError):
    """A transition the state machine does not have (a bug in the caller, not user input)."""


class GroupPolicy:
    """One group's state, attempts and readiness; each method is one transition."""

    def __init__(self, index: int, ranks: tuple[int, ...], max_restarts: int,
                 backoff_s: float = 0.5):
        self.index = index
        self.ranks = ranks
        self.max_restarts = max_restarts
        self.base_backoff_s = backoff_s
        self.state: GroupState | None = None
        self.attempt = 0
        self.failure: LaunchEvent | None = None
        self.exhausted = False  # stopped because its restarts ran out
        self.unready_restarts = 0  # restarts in a row that never reached ready
        self._ready: dict[int, dict[str, Any]] = {}

    @property
    def running(self) -> bool:
        """Workers are meant to be up (a failure now is a new failure)."""
        return self.state in (GroupState.STARTING, GroupState.READY)

    def _move(self, to: GroupState) -> None:
        if to not in ALLOWED[self.state]:
            raise TransitionError(f"group {self.index}: {self.state} -> {to} is no transition")
        self.state = to

    def _event(self, kind: str, **fields: Any) -> LaunchEvent:
        return LaunchEvent(kind=kind, group=self.index, ranks=self.ranks, attempt=self.attempt,
                           max_restarts=self.max_restarts, **fields)

    def start(self) -> LaunchEvent:
        """The group's workers are being started (first start, or after RESTARTING)."""
        self._move(GroupState.STARTING)
        self._ready = {}
        self.failure = None
        return self._event("starting")

    def worker_ready(self, rank: int, payload: dict[str, Any]) -> LaunchEvent | None:
        """`rank` reported ready; the "ready" event once every rank has."""
        if self.state is not GroupState.STARTING or rank not in self.ranks:
            return None
        self._ready[rank] = payload
        if len(self._ready) < len(self.ranks):
            return None
        self._move(GroupState.READY)
        self.unready_restarts = 0
        return self._event("ready", payloads=MappingProxyType(dict(sorted(self._ready.items()))))

    def worker_failed(self, rank: int, cause: str, *, exit_code: int | None = None,
                      signal: int | None = None, log_tail: tuple[str, ...] = (),
                      node: int | None = None) -> LaunchEvent | None:
        """The first failure of a running group: FAILED (tear it down). Later ones, or
        ends of workers being torn down, are no new failure: None."""
        if cause not in CAUSES:
            raise ValueError(f"unknown cause {cause!r}; one of {', '.join(CAUSES)}")
        if not self.running:
            return None
        self._move(GroupState.FAILED)
        self.failure = self._event("failed", rank=rank, cause=cause, exit_code=exit_code,
                                   signal=signal, log_tail=log_tail, node=node)
        return self.failure

    @property
    def restarts_left(self) -> int:
        return self.max_restarts - self.attempt

    def backoff_s(self) -> float:
        """How long to wait before the next start: the base, doubled for each restart in
        a row that did not reach ready (a group that was ready starts from the base
        again), at most MAX_BACKOFF_S."""
        return min(self.base_backoff_s * (2 ** max(0, self.unready_restarts - 1)),
                   MAX_BACKOFF_S)

    def torn_down(self) -> LaunchEvent:
        """Every worker of the failed group is gone: RESTARTING (next attempt) when
        restarts are left, else STOPPED with the failure that used up the last one."""
        if self.state is not GroupState.FAILED:
            raise TransitionError(f"group {self.index}: torn down while {self.state}")
        assert self.failure is not None
        if self.restarts_left > 0:
            self._move(GroupState.RESTARTING)
            self.attempt += 1
            self.unready_restarts += 1
            return self._event("restarting")
        self._move(GroupState.STOPPED)
        self.exhausted = True
        f = self.failure
        return self._event("stopped", rank=f.rank, cause=f.cause, exit_code=f.exit_code,
                           signal=f.signal, log_tail=f.log_tail, node=f.node)

    def stop(self) -> LaunchEvent | None:
        """The launch stops: STOPPED (None when already stopped)."""
        if self.state is GroupState.STOPPED:
            return None
        self._move(GroupState.STOPPED)
        return self._event("stopped")


__all__ = ["ALLOWED", "CAUSES", "GroupPolicy", "GroupState", "LaunchEvent", "TransitionError"]
