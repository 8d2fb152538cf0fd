"""The deadline watchdog's reading of the job's TCP store (a real store, in this process):
who never arrived and the root of the wait, and nothing at all once the store is gone (rank
0, which hosts it, ended first), so no rank that did arrive is ever named."""

from __future__ import annotations

from datetime import timedelta

import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")

from pypto_serving.core.comm_check import CheckSettings, plan_steps  # noqa: E402
from pypto_serving.core.loader import resolve_config  # noqa: E402
from pypto_serving.core.topology import resolve_topology  # noqa: E402
from pypto_serving.executor.comm_check_deadline import (  # noqa: E402
    STORE_PREFIX,
    Deadline,
    at_key,
    done_key,
)


def test_a_lost_store_gives_no_record_instead_of_naming_every_rank(tmp_path, monkeypatch,
                                                                   port):
    # DP 2 x TP 2: TP group 1 = ranks 2, 3; DP group 0 = ranks 0, 2
    topo = resolve_topology(resolve_config(overrides={
        "parallel": {"data_parallel_size": 2, "tensor_parallel_size": 2},
        "cluster": {"platform": "cpu", "devices_per_node": 4}}))
    steps = plan_steps(topo, CheckSettings(kinds=("tp", "dp"), ops=("all_reduce",),
                                           sizes=(64,)))
    tp_step, dp_step = steps
    server = dist.TCPStore("127.0.0.1", port, is_master=True, wait_for_workers=False,
                           timeout=timedelta(seconds=5))
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(port))
    keys = dist.PrefixStore(STORE_PREFIX, server)
    # rank 3 never arrived; rank 2 waits for it at the TP step; rank 0 reached the DP step
    for rank, at, done in ((0, 1, 0), (1, 1, 0), (2, 0, -1)):
        keys.set(at_key(rank), str(at))
        if done >= 0:
            keys.set(done_key(rank), str(done))
    watchdog = Deadline(0, 100.0, tmp_path, topo, steps)
    try:
        record = watchdog.record(dp_step, 0, (0, 2), 2.0)
        assert record["missing"] == [2] and record["root"] == [3]
        assert [c["rank"] for c in record["chain"]] == [2, 3]
        assert record["chain"][0]["missing"] == [3] and tp_step.index == 0
        del keys, server  # rank 0's process, and the store with it, is gone
        assert watchdog.record(dp_step, 0, (0, 2), 2.0) is None
    finally:
        watchdog.close()
