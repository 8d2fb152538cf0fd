"""Worker of the DP + EP refusal test: replica 1 asks for more positions than the model has.

Usage, as a launched script: refuse_worker.py OUT_DIR. Each rank writes OUT_DIR/rank{R}.json:
its tokens (and the single-process reference's), or the refusal it raised.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from pypto_serving.executor import distributed
from pypto_serving.executor.errors import SequenceTooLongError
from pypto_serving.executor.generate import greedy_generate, reference_generate
from pypto_serving.executor.model import build_reference_model
from pypto_serving.executor.runner import ReferenceModelRunner

PROMPT = [3, 1, 4, 1, 5]


def main(out: Path) -> None:
    ctx = distributed.init_distributed()
    runner = ReferenceModelRunner(ctx)
    runner.load_weights()
    too_long = [[7] * ctx.model.max_seq_len]
    prompts = [PROMPT] if ctx.rank_info.dp == 0 else too_long
    row: dict = {"dp": ctx.rank_info.dp}
    try:
        gen = greedy_generate(runner, prompts, 4)
        row["tokens"] = gen.tokens
        row["ref_tokens"] = reference_generate(build_reference_model(ctx.model), prompts,
                                               4).tokens
    except SequenceTooLongError as e:
        row["refused"] = str(e)
    (out / f"rank{ctx.rank}.json").write_text(json.dumps(row))
    distributed.destroy_distributed()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
