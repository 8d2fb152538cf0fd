"""A real 4-worker gloo job through `pypto launch`: results, argv, __main__, clean exit."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.timeout(90)


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_four_workers_all_reduce_and_exit_clean(method, port, lt):
    result = lt.run(
        ["--nproc-per-node", "4", "--master-port", str(port), "--start-method", method,
         str(lt.workers / "allreduce.py"), "x", "--flag", "y"], timeout=60)
    assert result.returncode == 0, result.stderr
    seen = lt.rank_json(result.stdout)
    assert sorted(seen) == [0, 1, 2, 3]
    for rank, row in seen.items():
        assert row["rank"] == rank and row["world"] == 4
        assert row["sum"] == 1 + 2 + 3 + 4
        assert row["argv"] == ["x", "--flag", "y"]
        assert row["main"] == "__main__"
    parents = {row["ppid"] for row in seen.values()}
    assert len(parents) == 1  # forked by the zygote, or spawned by the launcher
    # how each worker started: forked by the zygote, torch already imported, or exec'd by
    # it as a fresh interpreter (the zygote is every worker's parent, so that it can tear
    # every descendant down even after a kill -9 of the launcher)
    for row in seen.values():
        parent = " ".join(row["parent_cmdline"])
        assert "pypto_serving.launcher.zygote" in parent, parent
        if method == "fork":
            assert row["torch_preloaded"] is True
            assert "pypto_serving.launcher.zygote" in " ".join(row["cmdline"])
        else:
            assert row["torch_preloaded"] is False
            assert row["cmdline"][1:3] == ["-u", str(lt.workers / "allreduce.py")], row
    lt.assert_gone([row["pid"] for row in seen.values()] + list(parents))


def _fresh(lt, port, method, env_extra=None, args=()):
    import os

    env = {**os.environ, **(env_extra or {})}
    return lt.run(["--nproc-per-node", "3", "--master-port", str(port), "--start-method", method,
                   *args, str(lt.workers / "fresh.py")], timeout=60, env=env)


def test_forked_worker_looks_like_a_fresh_interpreter(port, lt):
    forked = _fresh(lt, port, "fork")
    spawned = _fresh(lt, port, "spawn")
    assert forked.returncode == 0 and spawned.returncode == 0, forked.stderr + spawned.stderr
    assert "fork" not in forked.stderr  # no fallback notice: it really forked
    fork_rows, spawn_rows = lt.rank_json(forked.stdout), lt.rank_json(spawned.stdout)
    assert sorted(fork_rows) == sorted(spawn_rows) == [0, 1, 2]
    same = ("main", "file", "path0", "argv0", "stdin", "stdout_tty", "unbuffered", "threads",
            "pgid_is_pid")
    for rank in range(3):
        for key in same:
            assert fork_rows[rank][key] == spawn_rows[rank][key], key
    assert fork_rows[0]["main"] == "__main__" and fork_rows[0]["threads"] == 1
    assert fork_rows[0]["unbuffered"] is True  # python -u, as torchrun runs workers
    # each forked worker has its own random streams
    assert len({row["random"] for row in fork_rows.values()}) == 3
    assert len({row["numpy"] for row in fork_rows.values()}) == 3
    assert len({row["torch_seed"] for row in fork_rows.values()}) == 3
    # interpreter ending: non-daemon threads joined, then atexit handlers
    for rank, lines in lt.rank_lines(forked.stdout).items():
        assert lines[-2:] == ["thread finished", "atexit ran"], (rank, lines)


def test_exit_code_and_traceback_of_a_forked_worker(port, lt):
    result = _fresh(lt, port, "fork", {"FRESH_RAISE": "1"})
    assert result.returncode == 1
    assert "RuntimeError: boom from the worker" in result.stderr
    tb = [line for line in result.stderr.splitlines() if line.startswith("[rank0]:  File")]
    assert tb and all("runpy" not in line and "zygote" not in line for line in tb), tb
    assert "exited with code 1" in result.stderr


def test_omp_threads_follow_the_environment_in_forked_workers(port, lt):
    result = _fresh(lt, port, "fork", {"OMP_NUM_THREADS": "2"})
    assert result.returncode == 0, result.stderr
    assert {row["threads"] for row in lt.rank_json(result.stdout).values()} == {2}


def test_module_target_runs_as_main(port, lt):
    result = lt.run(["--nproc-per-node", "2", "--master-port", str(port), "-m", "pkgmod.hello",
                     "a", "b"], timeout=60, cwd=lt.workers)
    assert result.returncode == 0, result.stderr
    rows = lt.rank_json(result.stdout)
    assert sorted(rows) == [0, 1]
    for row in rows.values():
        assert row["main"] == "__main__" and row["argv"] == ["a", "b"]
        assert row["argv0"].endswith("pkgmod/hello.py")


def test_cpu_bind_gives_each_rank_its_own_cpus(port, lt):
    import os

    cpus = sorted(os.sched_getaffinity(0))
    result = _fresh(lt, port, "fork", args=["--cpu-bind"])
    assert result.returncode == 0, result.stderr
    got = [lt.rank_json(result.stdout)[r]["affinity"] for r in range(3)]
    if len(cpus) >= 3:  # contiguous disjoint shares covering every CPU
        assert [c for share in got for c in share] == cpus
    else:  # more ranks than CPUs: one CPU each, round robin
        assert got == [[cpus[i % len(cpus)]] for i in range(3)]
