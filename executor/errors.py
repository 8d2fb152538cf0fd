"""User-facing errors of the executor, each saying what is wrong and how to fix it."""

from __future__ import annotations

from ..core.platform import PlatformUnavailableError

__all__ = ["CommTimeoutError", "DeviceMemoryError", "ExecutorError", "out_of_memory",
           "GroupsNotInitializedError", "LaunchEnvError", "PlatformUnavailableError",
           "SequenceTooLongError"]


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


OUT_OF_MEMORY_SIGNS = ("out of memory", "CUBLAS_STATUS_ALLOC_FAILED")
"""How an allocation failure reads when a library reports it as a plain RuntimeError."""


def out_of_memory(error: BaseException) -> bool:
    """Whether `error` is the device running out of memory: torch's OutOfMemoryError, or a
    RuntimeError from cuBLAS, Triton or NCCL saying so."""
    import torch  # the executor's errors are raised where torch is already loaded

    text = str(error)
    return isinstance(error, torch.OutOfMemoryError) or (
        isinstance(error, RuntimeError) and any(s in text for s in OUT_OF_MEMORY_SIGNS))


class DeviceMemoryError(ExecutorError):
    """The KV pool or the warm-up steps did not fit the device, with the settings to lower."""

    def __init__(self, what: str, rank: int, error: BaseException, advice: str):
        detail = (str(error).splitlines() or [type(error).__name__])[0]
        super().__init__(f"{what} ran out of device memory on rank {rank} ({detail}): {advice}")

    @classmethod
    def kv_pool(cls, blocks: int, rank: int, error: BaseException) -> DeviceMemoryError:
        return cls(f"the KV pool of {blocks} blocks", rank, error,
                   "lower serve.gpu_memory_utilization (the share of the memory free after "
                   "the weights it takes) or serve.kv_cache_bytes")

    @classmethod
    def warmup(cls, rank: int, error: BaseException) -> DeviceMemoryError:
        return cls("the warm-up steps", rank, error,
                   "the KV pool took serve.gpu_memory_utilization of the memory free after "
                   "the weights (or serve.kv_cache_bytes), and the rest must hold a step of "
                   "serve.max_num_batched_tokens tokens and the decode graphs; lower one of "
                   "those (or serve.max_num_seqs), or set serve.enforce_eager")
