"""`pypto topo show` and `pypto profiles` through typer's runner (and one real subprocess)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from pypto_serving.core.loader import resolve_config
from pypto_serving.core.topology import resolve_topology

SNAPSHOTS = Path(__file__).parent / "snapshots"
TWO_NODE_16 = ["-dp", "2", "-pp", "2", "-tp", "4", "--nnodes", "2"]


def test_default_profile_tables(cli):
    r = cli(["topo", "show"])
    assert r.exit_code == 0, r.output
    assert "world 4 = DP 2 x PP 1 x TP 2 + EP 4" in r.output
    lines = r.output.splitlines()
    row3 = next(line.split() for line in lines if line.split()[:1] == ["3"])
    # rank node local device dp pp tp ep layers heads kv experts vocab
    assert row3 == ["3", "0", "3", "cpu:3", "1", "0", "1", "3", "0-3", "4-7", "2-3", "6,7",
                    "128-255"]
    assert any(line.split()[:4] == ["tp", "2", "2", "[0,1]"] for line in lines)
    assert any(line.split()[:5] == ["dp", "2", "2", "[0,2]", "[1,3]"] for line in lines)


def test_json_matches_core_and_is_stable(cli):
    r = cli(["topo", "show", "--profile", "cpu-demo", "--json"])
    assert r.exit_code == 0
    doc = json.loads(r.stdout)
    assert doc["schema"] == "pypto.topology/v1"
    topo = resolve_topology(resolve_config(profile="cpu-demo"))
    assert doc["ranks"] == [topo.rank_info(i).to_dict()
                            | {"experts_truncated": False, "num_experts_held": 2}
                            for i in range(4)]
    assert doc["groups"]["ep"]["groups"][0]["ranks"] == [0, 1, 2, 3]
    assert set(doc["groups"]) == {"tp", "pp", "dp", "ep", "replica", "world"}
    assert doc["ranks_truncated"] is False


def test_rank_zoom_lists_its_groups(cli):
    r = cli(["topo", "show", *TWO_NODE_16, "--rank", "13", "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    (row,) = doc["ranks"]
    assert (row["node"], row["local_rank"], row["dp"], row["pp"], row["tp"]) == (1, 5, 1, 1, 1)
    groups = {k: v["groups"][0] for k, v in doc["groups"].items()}
    assert groups["tp"]["ranks"] == [12, 13, 14, 15]
    assert groups["pp"]["ranks"] == [9, 13] and groups["pp"]["rank_in_group"] == 1
    assert groups["dp"]["ranks"] == [5, 13]


def test_group_filter_and_errors(cli):
    r = cli(["topo", "show", "--group", "pp", "--json"])
    assert list(json.loads(r.stdout)["groups"]) == ["pp"]
    r = cli(["topo", "show", "--group", "xx"])
    assert r.exit_code == 2 and "unknown group kind 'xx'" in r.output
    r = cli(["topo", "show", "-tp", "2", "--group", "ep"])
    assert r.exit_code == 2 and "no EP group" in r.output and "enable_expert_parallel" in r.output
    r = cli(["topo", "show", "--map", "--rank", "3"])
    assert r.exit_code == 2 and "--map/--svg draw the whole layout" in r.output
    r = cli(["topo", "show", "--rank", "99"])
    assert r.exit_code == 2 and "rank 99 is outside the world (0..3)" in r.output


def test_million_rank_world_is_summarised(cli):
    args = ["topo", "show", "-dp", "4096", "-pp", "16", "-tp", "16", "--nnodes", "131072",
            "--model-profile", "llama-8b-shape"]
    r = cli([*args, "--json", "--limit", "8"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["world_size"] == 1_048_576
    assert len(doc["ranks"]) == 8 and doc["ranks_truncated"]
    assert doc["groups"]["dp"]["count"] == 256 and doc["groups"]["dp"]["truncated"]
    world = doc["groups"]["world"]["groups"][0]
    assert world["size"] == 1_048_576 and len(world["ranks"]) == 8 and world["ranks_truncated"]
    assert len(r.stdout) < 100_000  # summarised, not a million rows
    zoom = cli([*args, "--json", "--rank", "777777"])
    assert len(zoom.stdout) < 100_000
    assert json.loads(zoom.stdout)["groups"]["dp"]["groups"][0]["rank_in_group"] == 3038
    r = cli([*args, "--rank", "1048575"])
    assert r.exit_code == 0 and "1048575" in r.output
    table = cli(args)
    assert "first 64 of 1048576 ranks" in table.output


def test_flags_alone_equal_the_same_layout_from_a_file(cli, tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("parallel: {data_parallel_size: 2, tensor_parallel_size: 4}\n"
                 "cluster: {devices_per_node: 8}\n")
    from_file = json.loads(cli(["topo", "show", str(f), "--json"]).stdout)
    from_flags = json.loads(cli(["topo", "show", "-dp", "2", "-tp", "4", "--json"]).stdout)
    assert from_file == from_flags


def _snapshot(name: str, text: str) -> None:
    path = SNAPSHOTS / name
    if os.environ.get("PYPTO_UPDATE_SNAPSHOTS"):
        path.write_text(text)
    assert path.exists(), f"no snapshot {name}; create it with PYPTO_UPDATE_SNAPSHOTS=1"
    assert text == path.read_text(), f"{name} changed; rerun with PYPTO_UPDATE_SNAPSHOTS=1"


@pytest.mark.parametrize("name, args", [
    ("map-cpu-demo.txt", ["--profile", "cpu-demo"]),
    ("map-two-node-16.txt", TWO_NODE_16),
])
def test_map_plain_text_snapshot(cli, name, args):
    r = cli(["topo", "show", *args, "--map"])
    assert r.exit_code == 0, r.output
    _snapshot(name, r.stdout)
    world = json.loads(cli(["topo", "show", *args, "--json"]).stdout)["world_size"]
    assert world == (4 if "cpu-demo" in args else 16)
    for rank in range(world):
        assert f"r{rank}" in r.stdout


def test_map_svg_is_well_formed_and_holds_every_rank(cli, tmp_path):
    svg = tmp_path / "map.svg"
    r = cli(["topo", "show", *TWO_NODE_16, "--svg", str(svg)])
    assert r.exit_code == 0, r.output
    root = ET.parse(svg).getroot()
    assert root.tag.endswith("svg")
    text = "".join(root.itertext()).replace("\xa0", " ")
    for rank in range(16):
        assert f"r{rank}" in text


def test_big_map_draws_one_node(cli):
    r = cli(["topo", "show", "-dp", "64", "-tp", "8", "--nnodes", "64", "--map"])
    assert r.exit_code == 0, r.output
    assert "node 0" in r.stdout and "node 1 " not in r.stdout
    assert "nodes 1-63 repeat this pattern" in r.stdout


def test_profiles_lists_shipped_profiles(cli):
    r = cli(["profiles"])
    assert r.exit_code == 0, r.output
    assert "cpu-demo" in r.output and "llama-8b-shape" in r.output


def test_topo_show_subprocess_never_imports_torch(repo_root):
    code = (
        "import sys\n"
        "from pypto_serving.cli.main import app\n"
        "try:\n    app(['topo', 'show', '--map'])\n"
        "except SystemExit as e:\n    assert not e.code, e.code\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "r3" in out.stdout
    pypto = Path(sys.executable).parent / "pypto"
    out = subprocess.run([str(pypto), "topo", "show", "-tp", "3"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 2
    assert "parallel.tensor_parallel_size=3 (from --tensor-parallel-size)" in out.stderr
    assert "Traceback" not in out.stderr


MILLION = ["-dp", "4096", "-pp", "16", "-tp", "16", "--nnodes", "131072",
           "--model-profile", "llama-8b-shape"]


_HWM = """
import atexit, os, sys
def hwm():
    kb = open("/proc/self/status").read().split("VmHWM:")[1].split()[0]
    os.write(2, f"\\nVmHWM {kb}\\n".encode())
atexit.register(hwm)
sys.argv = ["pypto", *sys.argv[1:]]
from pypto_serving.cli.entry import main
main()
"""


def _peak_rss_mib(args: list[str], tmp_path: Path) -> tuple[int, float, str]:
    """Run `pypto ARGS` with stdout discarded: its exit code, its own peak RSS in MiB and its
    stderr. The peak is VmHWM of its own address space, read at exit: getrusage's maxrss
    would carry pytest's own (larger) peak over the exec and hide the child's."""
    err = tmp_path / "stderr"
    with open(err, "wb") as f:
        proc = subprocess.run([sys.executable, "-c", _HWM, *args], stdout=subprocess.DEVNULL,
                              stderr=f, timeout=100)
    text = err.read_text()
    head, _, kb = text.rpartition("\nVmHWM ")
    return proc.returncode, int(kb.split()[0]) / 1024, head[-4000:]


@pytest.mark.timeout(120)
def test_json_memory_stays_flat_whatever_the_limit(tmp_path):
    """4,096 ranks and groups of a million-rank layout, streamed: the same peak RSS as 1."""
    show = ["topo", "show", *MILLION, "--json", "--limit"]
    code, small, err = _peak_rss_mib([*show, "1"], tmp_path)
    assert code == 0, err
    code, big, err = _peak_rss_mib([*show, "4096"], tmp_path)
    assert code == 0, err
    assert big - small < 20, f"peak RSS {small:.0f} MiB at --limit 1, {big:.0f} at 4096"


@pytest.mark.parametrize("limit", ["0", "4097", "65536"])
def test_limit_past_the_bound_is_a_usage_error(cli, limit):
    r = cli(["topo", "show", *MILLION, "--limit", limit])
    assert r.exit_code == 2
    assert f"--limit {limit} is outside 1..4096" in r.output and "--rank R" in r.output


def test_tables_mark_truncated_experts_and_members(cli):
    r = cli(["topo", "show", "-dp", "4", "-tp", "2", "--limit", "3"])
    assert r.exit_code == 0, r.output
    row0 = next(line.split() for line in r.output.splitlines() if line.split()[:1] == ["0"])
    assert row0[11] == "0,1,2,…" and row0[12] == "(8)"
    assert "[0,1,2,… (8)]" in r.output  # the world group of 8, three listed
