"""An EngineServer over the fake model on the main thread (SIGTERM stops it): prints its
endpoint, serves, prints "stopped" and exits 0."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from engine_fakes import FakeModelExecutor  # noqa: E402

from pypto_serving.engine.engine import Engine  # noqa: E402
from pypto_serving.engine.server import EngineServer  # noqa: E402
from pypto_serving.engine.tokenizer import ByteTokenizer  # noqa: E402


def main() -> None:
    engine = Engine(FakeModelExecutor(64, 4), num_blocks=64, block_size=4, max_num_seqs=4,
                    max_num_batched_tokens=32, max_model_len=256, tokenizer=ByteTokenizer())
    server = EngineServer(engine, replica=3, model_name="fake")
    print(server.endpoint, flush=True)
    server.run()
    print("stopped", flush=True)


if __name__ == "__main__":
    main()
