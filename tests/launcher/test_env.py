"""Worker environment: torchrun parity, PYPTO_CONFIG and the rank's coordinates."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pypto_serving.core.loader import load_profile
from pypto_serving.core.topology import resolve_topology

pytestmark = pytest.mark.timeout(120)
TORCHRUN = Path(sys.executable).parent / "torchrun"
# Known, documented differences: we host no agent store, and error files live elsewhere.
DIFFERENT_VALUE = {"TORCHELASTIC_USE_AGENT_STORE", "TORCHELASTIC_ERROR_FILE"}
OURS_ONLY = {"PYPTO_DEVICE"}


def _base_env() -> dict[str, str]:
    env = dict(os.environ)
    for key in ("OMP_NUM_THREADS", "PYPTO_CONFIG", "PYPTO_LAUNCH_START_METHOD"):
        env.pop(key, None)
    return env


def _added(rows: dict[int, dict], base: dict[str, str]) -> dict[int, dict[str, str]]:
    return {r: {k: v for k, v in row["env"].items() if base.get(k) != v}
            for r, row in rows.items()}


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun not installed")
def test_env_matches_torchrun_for_the_same_flags(port, lt, tmp_path):
    base = _base_env()
    flags = ["--nproc-per-node", "2", "--master-addr", "127.0.0.1", "--master-port", str(port),
             "--rdzv-id", "parity", "--max-restarts", "1"]
    script = str(lt.workers / "envdump.py")
    theirs = subprocess.run([str(TORCHRUN), *flags, script, str(tmp_path)], env=base,
                            capture_output=True, text=True, timeout=90)
    assert theirs.returncode == 0, theirs.stderr
    ours = lt.run([*flags, script], timeout=60, env=base)
    assert ours.returncode == 0, ours.stderr
    their_rows = {}
    for path in tmp_path.glob("rank*.json"):
        row = json.loads(path.read_text())
        their_rows[int(row["env"]["RANK"])] = row
    t_env, o_env = _added(their_rows, base), _added(lt.rank_json(ours.stdout), base)
    assert sorted(t_env) == sorted(o_env) == [0, 1]
    for rank in (0, 1):
        t, o = t_env[rank], o_env[rank]
        assert set(o) - set(t) == OURS_ONLY
        assert set(t) - set(o) == set()
        for key in set(t) - DIFFERENT_VALUE:
            assert o[key] == t[key], (rank, key)
        assert t["TORCHELASTIC_USE_AGENT_STORE"] == "True"
        assert o["TORCHELASTIC_USE_AGENT_STORE"] == "False"
        assert o["TORCHELASTIC_ERROR_FILE"].endswith(f"/{rank}/error.json")
    assert o_env[1]["RANK"] == "1" and o_env[1]["OMP_NUM_THREADS"] == "1"
    assert o_env[0]["TORCHELASTIC_RUN_ID"] == "parity"


def test_profile_gives_pypto_config_and_coordinates(lt):
    result = lt.run(["--profile", "cpu-demo", "--standalone", str(lt.workers / "envdump.py")],
                    timeout=60)
    assert result.returncode == 0, result.stderr
    rows = lt.rank_json(result.stdout)
    topo = resolve_topology(load_profile("cpu-demo"))
    assert sorted(rows) == list(range(topo.world_size))
    for rank, row in rows.items():
        env, info = row["env"], topo.rank_info(rank)
        assert row["config_world"] == topo.world_size  # PYPTO_CONFIG loads with load_config
        assert (env["PYPTO_DP_RANK"], env["PYPTO_TP_RANK"], env["PYPTO_PP_RANK"],
                env["PYPTO_EP_RANK"]) == (str(info.dp), str(info.tp), str(info.pp),
                                          str(info.ep))
        assert env["WORLD_SIZE"] == "4" and env["LOCAL_WORLD_SIZE"] == "4"
        assert env["PYPTO_DEVICE"] == "cpu"
    assert not Path(rows[0]["env"]["PYPTO_CONFIG"]).exists()  # per-run dir is removed


def test_without_ep_the_ep_rank_is_absent(lt):
    result = lt.run(["--profile", "cpu-pp2-tp2", "--standalone",
                     str(lt.workers / "envdump.py")], timeout=60)
    assert result.returncode == 0, result.stderr
    rows = lt.rank_json(result.stdout)
    topo = resolve_topology(load_profile("cpu-pp2-tp2"))
    for rank, row in rows.items():
        assert "PYPTO_EP_RANK" not in row["env"]
        assert row["env"]["PYPTO_PP_RANK"] == str(topo.rank_info(rank).pp)


def test_plain_torchrun_style_launch_has_no_pypto_coordinates(lt):
    base = _base_env()
    result = lt.run(["--nproc-per-node", "2", "--standalone", str(lt.workers / "envdump.py")],
                    timeout=60, env=base)
    assert result.returncode == 0, result.stderr
    for row in lt.rank_json(result.stdout).values():
        added = {k for k in row["env"] if k.startswith("PYPTO_") and k not in base}
        assert added == {"PYPTO_DEVICE"}
