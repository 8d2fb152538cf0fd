"""What the engine asks of the executor side: one step over a plan, and the DP lock-step vote.

The engine (scheduler, block manager) sees one logical worker through this protocol and never
a tensor or an expert shard. engine-exec's `ReplicaExecutor` implements it on a replica's
leader rank; tests use a small pure-Python model behind the same protocol.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from .plan import StepPlan, StepResult


@runtime_checkable
class StepExecutor(Protocol):
    """Runs engine steps on every rank of one replica."""

    def execute(self, plan: StepPlan) -> StepResult:
        """One step on every rank of the replica; an empty plan is a dummy step (it joins the
        collectives, e.g. the MoE all2all under DP + EP, with no work of its own). Returns one
        sampled token per chunk with `sample` set, by seq_id."""
        ...

    def must_step(self, has_work: bool) -> bool:
        """Whether this replica must step now: under DP + EP True if ANY replica has work (a
        CPU collective across the replicas, every replica calls it once per loop turn);
        otherwise just `has_work`."""
        ...

    def close(self) -> None:
        """Release the executor (tell the other ranks to leave their step loop)."""
        ...
