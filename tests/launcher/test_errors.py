"""Bad input: one clear line, exit code 2, and no worker ever started."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def marker_script(tmp_path):
    """A script that leaves a file behind if it ever runs."""
    script = tmp_path / "mark.py"
    script.write_text(f"open({str(tmp_path / 'ran')!r}, 'w').close()\n")
    return script


def _check(result, tmp_path, *needles):
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "ran").exists()


def test_missing_script(lt, tmp_path):
    result = lt.run(["--standalone", str(tmp_path / "nope.py")], timeout=30)
    _check(result, tmp_path, "nope.py", "does not exist")


def test_bad_module_name(lt, tmp_path):
    result = lt.run(["--standalone", "-m", "pypto_serving.no_such_module"], timeout=30)
    _check(result, tmp_path, "no module named 'pypto_serving.no_such_module'")


def test_more_processes_than_devices(lt, tmp_path, marker_script):
    result = lt.run(["--platform", "cuda", "--nproc-per-node", "2", "--standalone",
                     str(marker_script)], timeout=30)
    _check(result, tmp_path, "2 processes per node", "cuda device", "--nproc-per-node")


def test_profile_devices_the_machine_lacks(lt, tmp_path, marker_script):
    result = lt.run(["--profile", "tp8-one-node", "--standalone", str(marker_script)],
                    timeout=30)
    _check(result, tmp_path, "8 processes per node", "cuda")


def test_world_size_contradicting_the_config(lt, tmp_path, marker_script):
    result = lt.run(["--profile", "cpu-demo", "--nproc-per-node", "2", "--standalone",
                     str(marker_script)], timeout=30)
    _check(result, tmp_path, "--nproc-per-node 2 contradicts cluster.devices_per_node=4",
           "profile cpu-demo")
    result = lt.run(["--profile", "cpu-demo", "--nnodes", "2", "--standalone",
                     str(marker_script)], timeout=30)
    _check(result, tmp_path, "--nnodes 2 contradicts cluster.nnodes=1")


def test_node_rank_out_of_range(lt, tmp_path, marker_script):
    result = lt.run(["--nnodes", "2", "--node-rank", "2", "--master-addr", "127.0.0.1",
                     str(marker_script)], timeout=30)
    _check(result, tmp_path, "--node-rank 2 is out of range")


def test_bad_config_file_names_the_field(lt, tmp_path, marker_script):
    bad = tmp_path / "bad.yaml"
    bad.write_text("parallel:\n  tensor_parallel_size: 3\n")
    result = lt.run(["--config", str(bad), "--standalone", str(marker_script)], timeout=30)
    assert result.returncode == 2
    assert "tensor_parallel_size" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "ran").exists()


def test_launcher_process_never_imports_torch(lt, tmp_path):
    """A whole successful launch (forked workers importing torch) leaves the launcher's own
    interpreter without torch."""
    import subprocess
    import sys

    (tmp_path / "w.py").write_text("import torch\nprint('worker has torch')\n")
    code = ("import sys\n"
            "from pypto_serving.cli.main import app\n"
            "try:\n"
            "    app(['launch', '--standalone', '--nproc-per-node', '2', 'w.py'])\n"
            "except SystemExit as e:\n"
            "    print('exit', e.code)\n"
            "print('launcher has torch:', 'torch' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, cwd=tmp_path)
    assert "[rank1]:worker has torch" in out.stdout, out.stderr
    assert "exit 0" in out.stdout
    assert "launcher has torch: False" in out.stdout
