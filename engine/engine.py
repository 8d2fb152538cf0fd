"""The replica engine: requests in, one scheduled step at a time, outputs out.

Skeleton with the final constructor signature (so the executor side can code against it);
the body follows.
"""

from __future__ import annotations

from .executor_api import StepExecutor


class Engine:
    """One DP replica's engine on its leader rank: scheduler, block manager, prefix cache,
    detokenization and stop handling over a `StepExecutor`."""

    def __init__(
        self,
        executor: StepExecutor,
        *,
        num_blocks: int,
        block_size: int,
        max_num_seqs: int,
        max_num_batched_tokens: int,
        max_model_len: int,
        tokenizer,
        eos_token_id: int | None = None,
    ):
        self.executor = executor
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.max_model_len = max_model_len
        self.tokenizer = tokenizer
        self.eos_token_id = eos_token_id
