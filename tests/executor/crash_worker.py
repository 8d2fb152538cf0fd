"""Worker of the failure test: one rank kills itself (SIGKILL) in the middle of a decode step.

Usage, as a launched script: crash_worker.py VICTIM_RANK MARK_DIR

Every rank writes MARK_DIR/rank{R}.step{N} as it starts decode step N, so the test can tell
that the job got mid-way. The victim dies inside layer 1's attention (before its output
projection) of decode step 2, after its peers have entered that step's collectives: they are
left waiting on a dead peer.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import torch

from pypto_serving.executor import distributed
from pypto_serving.executor.generate import greedy_generate
from pypto_serving.executor.runner import ReferenceModelRunner

KILL_AT_STEP = 2


def main(victim: int, mark_dir: str) -> None:
    torch.set_num_threads(1)
    ctx = distributed.init_distributed()
    runner = ReferenceModelRunner(ctx)
    runner.load_weights()
    step = {"n": 0}

    def mark(i, _out):
        step["n"] = i + 1
        Path(mark_dir, f"rank{ctx.rank}.step{i + 1}").touch()

    def die(_module, _inputs):
        if step["n"] == KILL_AT_STEP:
            os.kill(os.getpid(), signal.SIGKILL)

    if ctx.rank == victim:
        runner.model.layers[1].attention.wo.register_forward_pre_hook(die)
    greedy_generate(runner, [[1, 2, 3, 4], [5, 6]], max_new_tokens=6, on_step=mark)
    # reaching here means the victim never died: say so loudly
    print(f"rank {ctx.rank}: finished all steps", flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
