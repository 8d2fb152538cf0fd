"""Resolving a launch request (in process; nothing is started here)."""

from __future__ import annotations

import io

import pytest

from pypto_serving.core.loader import resolve_config
from pypto_serving.launcher import LaunchError, LaunchSpec, launch
from pypto_serving.launcher.devices import binding_env, cpu_sets, visible_devices
from pypto_serving.launcher.plan import make_plan
from pypto_serving.launcher.workers import fork_rule_allows

CPU = {"PYPTO_PLATFORM": "cpu"}  # plans of CPU jobs, also on a GPU machine


@pytest.fixture
def script(tmp_path):
    path = tmp_path / "w.py"
    path.write_text("print('hi')\n")
    return str(path)


def test_torchrun_defaults(script):
    plan = make_plan(LaunchSpec(target=script, env=CPU))
    assert (plan.nnodes, plan.nproc_per_node, plan.master_addr, plan.master_port) == (
        1, 1, "127.0.0.1", 29500)
    assert plan.run_id == "none" and plan.config is None and plan.platform == "cpu"
    standalone = make_plan(LaunchSpec(target=script, standalone=True, env=CPU))
    assert len(standalone.run_id) == 36 and standalone.master_port != 29500


def test_config_sets_the_world(script):
    plan = make_plan(LaunchSpec(target=script, profile="cpu-pp2-tp2", env=CPU))
    assert plan.world_size == 4 and plan.nproc_per_node == 4
    assert plan.topology().rank_info(3).pp == 1


def test_stream_specs_parse_like_torchrun(script):
    plan = make_plan(LaunchSpec(target=script, nproc_per_node=3, redirects="0:1,2:3",
                                log_dir="/tmp/x", env=CPU))
    assert plan.redirects == ((True, False), (False, False), (True, True))
    with pytest.raises(LaunchError, match="--tee '4'"):
        make_plan(LaunchSpec(target=script, tee="4", env=CPU))
    with pytest.raises(LaunchError, match="names local rank 5"):
        make_plan(LaunchSpec(target=script, nproc_per_node=2, redirects="5:1", env=CPU))


def test_bad_numbers_are_named(script):
    with pytest.raises(LaunchError, match="--nproc-per-node 'x' is not a whole number"):
        make_plan(LaunchSpec(target=script, nproc_per_node="x", env=CPU))
    with pytest.raises(LaunchError, match="elastic node ranges are not supported"):
        make_plan(LaunchSpec(target=script, nnodes="1:4", env=CPU))
    with pytest.raises(LaunchError, match="--nnodes > 1 needs --master-addr"):
        make_plan(LaunchSpec(target=script, nnodes=2, env=CPU))
    with pytest.raises(LaunchError, match="--local-ranks-filter names local rank"):
        make_plan(LaunchSpec(target=script, local_ranks_filter="3", env=CPU))


def test_module_lookup_does_not_import(script):
    import sys

    assert "this" not in sys.modules  # importing it would print the Zen of Python
    make_plan(LaunchSpec(target="this", module=True, env=CPU))
    assert "this" not in sys.modules
    with pytest.raises(LaunchError, match="is a module, not a package"):
        make_plan(LaunchSpec(target="json.decoder.nope", module=True, env=CPU))


def test_device_binding():
    assert binding_env("cuda", 1, "local-rank", ["0", "1"]) == {"PYPTO_DEVICE": "cuda:1"}
    assert binding_env("cuda", 1, "mask", ["4", "6"]) == {"CUDA_VISIBLE_DEVICES": "6",
                                                          "PYPTO_DEVICE": "cuda:0"}
    assert binding_env("npu", 0, "mask", ["3"]) == {"ASCEND_RT_VISIBLE_DEVICES": "3",
                                                    "PYPTO_DEVICE": "npu:0"}
    assert binding_env("cpu", 2, "mask", []) == {"PYPTO_DEVICE": "cpu"}
    assert visible_devices("cuda", {"CUDA_VISIBLE_DEVICES": "2,3"}) == ["2", "3"]


def test_cpu_sets():
    assert cpu_sets(2, [0, 1, 2, 3, 4]) == [[0, 1, 2], [3, 4]]
    assert cpu_sets(3, [4, 5]) == [[4], [5], [4]]


def test_fork_rule():
    assert fork_rule_allows("auto", "cpu", 4) == (True, "")
    assert not fork_rule_allows("auto", "cuda", 4)[0]
    assert fork_rule_allows("fork", "cuda", 4)[0]
    assert not fork_rule_allows("auto", "cpu", 1)[0]
    assert not fork_rule_allows("spawn", "cpu", 4)[0]
    assert not fork_rule_allows("auto", "cpu", 4, {"PYTHON_EXEC": "/usr/bin/python3"})[0]


def test_api_reports_a_failure_in_process(tmp_path, port):
    bad = tmp_path / "bad.py"
    printed = tmp_path / "rank0-printed"  # rank 1 fails only once rank 0 has had its say
    bad.write_text("import os, sys, time\nprint('rank', os.environ['RANK'], flush=True)\n"
                   f"flag = {str(printed)!r}\n"
                   "if os.environ['RANK'] == '0':\n    open(flag, 'w').close()\n"
                   "else:\n    end = time.monotonic() + 30\n"
                   "    while not os.path.exists(flag) and time.monotonic() < end:\n"
                   "        time.sleep(0.01)\n"
                   "sys.exit(5 if os.environ['RANK'] == '1' else 0)\n")
    out, err = io.StringIO(), io.StringIO()
    result = launch(LaunchSpec(target=str(bad), nproc_per_node=2, master_port=port,
                               start_method="spawn", max_restarts=1), stdout=out, stderr=err)
    assert result.exit_code == 1 and result.start_method == "spawn" and result.restarts == 1
    assert [(f.rank, f.returncode) for f in result.failures] == [(1, 5), (1, 5)]
    assert result.failures[0].tail == ("rank 1",)
    assert "[rank0]:rank 0" in out.getvalue()
    assert "rank 1 (local rank 1, node 0) exited with code 5" in err.getvalue()


def test_torchrun_rendezvous_flags(script):
    secret = "s3cret-" * 4
    plan = make_plan(LaunchSpec(target=script, nnodes=2, rdzv_endpoint="node0:1234",
                                rdzv_backend="c10d", env={**CPU, "PYPTO_LAUNCH_SECRET": secret}))
    assert (plan.master_addr, plan.master_port) == ("node0", 1234)
    assert plan.secret == secret.encode()  # the launchers' alone: not for the workers
    assert "PYPTO_LAUNCH_SECRET" not in plan.base_env and secret not in repr(plan)
    plan = make_plan(LaunchSpec(target=script, rdzv_endpoint="[::1]", rdzv_backend="static",
                                env=CPU))
    assert (plan.master_addr, plan.master_port) == ("::1", 29400)
    with pytest.raises(LaunchError, match="--rdzv-backend 'etcd' is not supported"):
        make_plan(LaunchSpec(target=script, rdzv_backend="etcd", env=CPU))
    with pytest.raises(LaunchError, match="names the master already"):
        make_plan(LaunchSpec(target=script, rdzv_endpoint="a:1", master_port=2, env=CPU))
    with pytest.raises(LaunchError, match="give HOST or HOST:PORT"):
        make_plan(LaunchSpec(target=script, rdzv_endpoint="a:b:c", env=CPU))


def test_logged_streams_follow_redirects_and_tee(script):
    every = make_plan(LaunchSpec(target=script, nproc_per_node=2, log_dir="/tmp/x", env=CPU))
    assert all(every.logged(r, fd) for r in (0, 1) for fd in (1, 2))
    some = make_plan(LaunchSpec(target=script, nproc_per_node=2, redirects="0:2", tee="1:1",
                                log_dir="/tmp/x", env=CPU))
    assert [[some.logged(r, fd) for fd in (1, 2)] for r in (0, 1)] == [[False, True],
                                                                       [True, False]]


def test_pypto_platform_ranks_below_flag_and_config(script):
    env = {"PYPTO_PLATFORM": "cpu"}
    assert make_plan(LaunchSpec(target=script, env=env)).platform == "cpu"
    assert make_plan(LaunchSpec(target=script, profile="cpu-demo",
                                env={"PYPTO_PLATFORM": "npu"})).platform == "cpu"
    flags = make_plan(LaunchSpec(target=script, env=env, config=resolve_config(
        overrides={"parallel": {"tensor_parallel_size": 2}})))
    # The workers' config names the platform the launcher chose, not 'auto'.
    assert flags.platform == "cpu" and flags.config.cluster.platform == "cpu"
    with pytest.raises(LaunchError, match="PYPTO_PLATFORM='gpu' is not one of"):
        make_plan(LaunchSpec(target=script, env={"PYPTO_PLATFORM": "gpu"}))
