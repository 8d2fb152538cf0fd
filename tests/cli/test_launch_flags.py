"""`pypto launch` takes the layout flags with vLLM's names (issue 11), in real processes."""

from __future__ import annotations

import json

from pypto_serving.core.loader import resolve_config
from pypto_serving.core.topology import resolve_topology

WORKER = """
import json, os
keys = ["RANK", "WORLD_SIZE", "PYPTO_DP_RANK", "PYPTO_TP_RANK", "PYPTO_PP_RANK", "PYPTO_EP_RANK"]
cfg = json.load(open(os.environ["PYPTO_CONFIG"]))
tp = cfg["parallel"]["tensor_parallel_size"]
print(json.dumps({**{k: os.environ.get(k) for k in keys}, "tp": tp}))
"""


def _rows(stdout: str) -> dict[int, dict]:
    rows = {}
    for line in stdout.splitlines():
        if line.startswith("[rank") and "{" in line:
            row = json.loads(line.split("]:", 1)[1])
            rows[int(row["RANK"])] = row
    return rows


def test_flags_alone_describe_the_launched_layout(pypto_launch, tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    r = pypto_launch(["--standalone", "-dp", "2", "-tp", "2", "--enable-expert-parallel",
                      "--platform", "cpu", str(script)], timeout=90)
    assert r.returncode == 0, r.stderr
    rows = _rows(r.stdout)
    topo = resolve_topology(resolve_config(overrides={
        "parallel": {"data_parallel_size": 2, "tensor_parallel_size": 2,
                     "enable_expert_parallel": True}}))
    assert sorted(rows) == [0, 1, 2, 3]
    for rank, row in rows.items():
        info = topo.rank_info(rank)
        assert row["WORLD_SIZE"] == "4" and row["tp"] == 2
        assert (row["PYPTO_DP_RANK"], row["PYPTO_TP_RANK"], row["PYPTO_EP_RANK"]) == (
            str(info.dp), str(info.tp), str(info.ep))


def test_flag_error_is_one_message_and_spawns_nothing(pypto_launch, tmp_path):
    script = tmp_path / "worker.py"
    script.write_text("raise SystemExit('must not run')\n")
    r = pypto_launch(["--standalone", "-tp", "3", str(script)], timeout=60)
    assert r.returncode == 2
    assert "parallel.tensor_parallel_size=3 (from --tensor-parallel-size)" in r.stderr
    assert "must not run" not in r.stderr + r.stdout and "Traceback" not in r.stderr


def test_contradiction_names_launchs_own_flag(pypto_launch, tmp_path):
    script = tmp_path / "worker.py"
    script.write_text("raise SystemExit('must not run')\n")
    r = pypto_launch(["--standalone", "-dp", "2", "-tp", "2", "--nproc-per-node", "2",
                      str(script)], timeout=60)
    assert r.returncode == 2
    assert ("cluster.devices_per_node=2 (from --nproc-per-node; with --data-parallel-size"
            in r.stderr)
    assert "--devices-per-node" not in r.stderr


def test_torchrun_rendezvous_flags(pypto_launch, tmp_path, port):
    script = tmp_path / "worker.py"
    script.write_text("import os\nprint(os.environ['MASTER_ADDR'], os.environ['MASTER_PORT'])\n")
    r = pypto_launch(["--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}",
                      "--nproc-per-node", "2", str(script)], timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count(f"127.0.0.1 {port}") == 2
    r = pypto_launch(["--rdzv-backend", "etcd", str(script)], timeout=60)
    assert r.returncode == 2 and "--rdzv-backend 'etcd' is not supported" in r.stderr


def test_a_word_for_nproc_is_checked_against_the_flag_layout(pypto_launch, tmp_path):
    script = tmp_path / "worker.py"
    script.write_text("raise SystemExit('must not run')\n")
    r = pypto_launch(["--standalone", "-dp", "128", "-tp", "2", "--nproc-per-node", "auto",
                      str(script)], timeout=60)
    assert r.returncode == 2, r.stderr
    assert "--nproc-per-node auto (" in r.stderr
    assert "contradicts cluster.devices_per_node=256 of the layout given by flags" in r.stderr


def test_a_fifo_as_the_script_is_refused_before_anything_starts(pypto_launch, tmp_path):
    """A worker interpreter opening a FIFO would block for ever; the launcher says so."""
    import os

    fifo = tmp_path / "worker.py"
    os.mkfifo(fifo)
    r = pypto_launch(["--standalone", "--platform", "cpu", str(fifo)], timeout=60)
    assert r.returncode == 2, r.stderr
    assert "is not a regular file (a FIFO, device or socket); give a .py file" in r.stderr
    assert "Traceback" not in r.stderr
