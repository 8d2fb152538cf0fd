"""Bad input: one clear line, exit code 2, and no worker ever started."""

from __future__ import annotations

import os

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


@pytest.mark.parametrize(("flag", "value", "needle"), [
    ("--grace-period", "nan", "--grace-period nan must be a finite number of seconds"),
    ("--grace-period", "-1", "--grace-period -1.0 must be a finite number"),
    ("--grace-period", "1e308", "--grace-period 1e+308 must be a finite number"),
    ("--rdzv-timeout", "nan", "--rdzv-timeout nan must be a finite number of seconds > 0"),
    ("--rdzv-timeout", "inf", "--rdzv-timeout inf must be"),
    ("--rdzv-timeout", "0", "--rdzv-timeout 0.0 must be"),
    ("--nproc-per-node", str(10**30), "--nproc-per-node 10000000000000000000... (31 digits) "
                                      "is out of range: use 1..1024"),
    ("--nnodes", str(10**30), "--nnodes 10000000000000000000... (31 digits) is out of range"),
    ("--max-restarts", str(10**20), "--max-restarts 100000000000000000000 is out of range"),
])
def test_numbers_out_of_range_name_the_flag(flag, value, needle, lt, tmp_path, marker_script):
    extra = ["--master-addr", "127.0.0.1"] if flag == "--nnodes" else ["--standalone"]
    result = lt.run([flag, value, *extra, str(marker_script)], timeout=30)
    _check(result, tmp_path, needle)


def test_log_dir_that_is_a_file_or_unwritable(lt, tmp_path, marker_script):
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    result = lt.run(["--log-dir", str(a_file), "--standalone", str(marker_script)],
                    timeout=30)
    _check(result, tmp_path, f"--log-dir {a_file} is not a directory")
    # /proc is a directory no one can create files in (root included)
    result = lt.run(["--log-dir", "/proc", "--standalone", str(marker_script)], timeout=30)
    _check(result, tmp_path, "--log-dir /proc is not writable")


def test_log_dir_with_a_symlinked_rank_log_is_refused(lt, tmp_path, marker_script):
    """An existing rank0.log that is a symlink is not followed (its target was
    overwritten); a hard link to another file is refused the same way."""
    logs = tmp_path / "logs"
    logs.mkdir()
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me\n")
    (logs / "rank0.log").symlink_to(precious)
    result = lt.run(["--log-dir", str(logs), "--standalone", str(marker_script)], timeout=30)
    _check(result, tmp_path, f"--log-dir {logs}: rank0.log exists and is a symlink")
    (logs / "rank0.log").unlink()
    os.link(precious, logs / "rank0.log")
    result = lt.run(["--log-dir", str(logs), "--standalone", str(marker_script)], timeout=30)
    _check(result, tmp_path, "rank0.log exists and is a hard link")
    assert precious.read_text() == "keep me\n"


def test_multi_node_needs_a_private_secret(lt, tmp_path, marker_script):
    """The job's secret comes from the environment or a private file, never a flag; a
    launch over several nodes without a usable one stops before anything starts."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYPTO_LAUNCH_SECRET")}
    two_nodes = ["--nnodes", "2", "--master-addr", "127.0.0.1", str(marker_script)]
    result = lt.run(two_nodes, timeout=30, env=env)
    _check(result, tmp_path, "needs the job's shared secret", "export PYPTO_LAUNCH_SECRET=",
           "PYPTO_LAUNCH_SECRET_FILE")
    result = lt.run(two_nodes, timeout=30, env={**env, "PYPTO_LAUNCH_SECRET": "short"})
    _check(result, tmp_path, "the secret in PYPTO_LAUNCH_SECRET has 5 bytes; use at least 16")
    secret_file = tmp_path / "secret"
    secret_file.write_text("0123456789abcdef0123456789abcdef\n")
    secret_file.chmod(0o644)
    result = lt.run(two_nodes, timeout=30, env={**env, "PYPTO_LAUNCH_SECRET_FILE":
                                                str(secret_file)})
    _check(result, tmp_path, "can be read by others (mode 644); run `chmod 600")
