"""The replica worker program: `python -m pypto_serving.engine.worker`, run under `pypto launch`.

Every rank joins the layout (`init_distributed()`, config from PYPTO_CONFIG), builds the
reference model runner for its share, sizes the KV pool (the same block count on every rank
of its replica) and warms up. The replica's leader prints the token capacity, builds the
Engine and its EngineServer (ZMQ, engine/protocol.py), reports ready with its endpoint and
serves until SIGTERM/SIGINT; the other ranks report ready and follow the leader's plans.
On SIGTERM the leader stops serving (under DP + EP all leaders agree to stop on the same
step), tells its ranks to leave, and every rank exits 0.

Environment: PYPTO_ENGINE_HOST (default 127.0.0.1) is the address the leader binds (port 0:
a free one; the endpoint is in the ready payload and printed).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading

from ..core.errors import USAGE_ERROR
from ..executor import distributed
from ..executor.errors import ExecutorError
from ..executor.kv_budget import KVPool, replica_kv_pool
from ..executor.replica import ReplicaExecutor, follow
from ..executor.runner import ReferenceModelRunner
from ..launcher.health import report_ready
from .engine import Engine
from .hf_tokenizer import load_tokenizer
from .server import EngineServer

JOIN_POLL_S = 0.2
"""How often the leader's main thread wakes while the server thread runs (signals land)."""


def capacity_line(replica: int, pool: KVPool) -> str:
    return (f"replica {replica}: KV pool {pool.num_blocks} blocks x {pool.block_size} tokens "
            f"= {pool.num_tokens} tokens ({pool.nbytes} bytes per rank, from "
            f"serve.{pool.source})")


def serve_leader(ctx, runner: ReferenceModelRunner, pool: KVPool) -> None:
    """Engine + EngineServer on the leader until a stop signal; then release the followers."""
    spec, serve = ctx.model, ctx.config.serve
    stop = threading.Event()
    executor = ReplicaExecutor(ctx, runner, stop=stop)
    engine = Engine(executor, num_blocks=pool.num_blocks, block_size=pool.block_size,
                    max_num_seqs=serve.max_num_seqs,
                    max_num_batched_tokens=serve.max_num_batched_tokens,
                    max_model_len=spec.max_seq_len, tokenizer=load_tokenizer(spec.path))
    host = os.environ.get("PYPTO_ENGINE_HOST", "127.0.0.1")
    server = EngineServer(engine, bind=f"tcp://{host}:0", replica=ctx.rank_info.dp,
                          model_name=spec.name)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: executor.request_stop())
    failure: list[BaseException] = []

    def run() -> None:
        try:
            server.run(stop)
        except BaseException as e:  # noqa: BLE001 - re-raised on the main thread
            failure.append(e)
            stop.set()

    # The server runs on its own thread so that the signal handlers above stay ours (the
    # server installs its own on the main thread, which would skip the DP + EP stop vote).
    thread = threading.Thread(target=run, name="engine-server")
    thread.start()
    print(json.dumps({"endpoint": server.endpoint, "replica": ctx.rank_info.dp}), flush=True)
    report_ready({"endpoint": server.endpoint, "replica": ctx.rank_info.dp})
    while thread.is_alive():
        thread.join(JOIN_POLL_S)
    executor.close()
    if failure:
        raise failure[0]


def main() -> int:
    try:
        ctx = distributed.init_distributed()
        runner = ReferenceModelRunner(ctx)
        runner.load_weights()
        pool = replica_kv_pool(ctx, distributed.get_cpu_group("replica"))
        runner.init_kv_cache(pool.num_blocks)
        runner.warmup()
    except ExecutorError as e:  # a config or launch mistake: say what to fix, no traceback
        print(f"pypto_serving.engine.worker: {e}", file=sys.stderr)
        return USAGE_ERROR
    if ctx.is_replica_leader:
        print(capacity_line(ctx.rank_info.dp, pool), flush=True)
        print(f"replica {ctx.rank_info.dp}: decode steps run "
              + (runner.graphs.describe() if runner.graphs else f"eagerly: {runner.eager_reason}"),
              flush=True)
        serve_leader(ctx, runner, pool)
    else:
        # The leader decides when to stop and sends a shutdown plan; a signal here only
        # must not kill the rank in the middle of a step.
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: None)
        report_ready({})
        follow(ctx, runner)
    distributed.destroy_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
