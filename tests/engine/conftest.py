"""Engine test fixtures: an Engine over the paged fake model."""

from __future__ import annotations

import pytest
from engine_fakes import FakeModelExecutor

from pypto_serving.engine.engine import Engine
from pypto_serving.engine.tokenizer import ByteTokenizer


@pytest.fixture
def make_engine():
    """make_engine(num_blocks=64, block_size=4, ...) -> Engine over a FakeModelExecutor
    (reachable as engine.executor)."""

    def make(num_blocks: int = 64, block_size: int = 4, max_num_seqs: int = 8,
             max_num_batched_tokens: int = 32, max_model_len: int = 512, **kw) -> Engine:
        return Engine(FakeModelExecutor(num_blocks, block_size), num_blocks=num_blocks,
                      block_size=block_size, max_num_seqs=max_num_seqs,
                      max_num_batched_tokens=max_num_batched_tokens,
                      max_model_len=max_model_len, tokenizer=ByteTokenizer(), **kw)

    return make
