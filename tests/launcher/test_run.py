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
    lt.assert_gone([row["pid"] for row in seen.values()] + list(parents))
