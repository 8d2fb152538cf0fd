"""User-facing errors of the executor, each saying what is wrong and how to fix it."""

from __future__ import annotations

from ..core.platform import PlatformUnavailableError

__all__ = ["CommTimeoutError", "ExecutorError", "GroupsNotInitializedError", "LaunchEnvError",
           "PlatformUnavailableError", "SequenceTooLongError"]


class ExecutorError(RuntimeError):
    """Base class: a worker cannot run as configured."""


class LaunchEnvError(ExecutorError):
    """The worker was not started by `pypto launch` (or torchrun with PYPTO_CONFIG)."""


class GroupsNotInitializedError(ExecutorError):
    """A group accessor was called before `init_distributed()` created the groups."""

    def __init__(self, kind: str):
        self.kind = kind
        super().__init__(
            f"the {kind.upper()} group is not initialized: call "
            "pypto_serving.executor.distributed.init_distributed() first, in a worker started "
            "by `pypto launch --config FILE script.py`"
        )


class SequenceTooLongError(ExecutorError):
    """A sequence needs a position at or beyond model.max_seq_len (no rotary entry for it)."""


class CommTimeoutError(ExecutorError):
    """A collective waited PYPTO_COMM_TIMEOUT_S for a peer of its group that never came."""
