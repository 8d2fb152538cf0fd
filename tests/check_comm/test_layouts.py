"""Every op on every group kind of four layouts, through real gloo workers: zero wrong
elements, every group and size reported, bus bandwidth by nccl-tests' factors."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.timeout(200)

QUICK = ["--sizes", "64B,4KB", "--iters", "3", "--warmup", "1"]  # small and quick
REDUCE_OPS = {"all_reduce": "", "all_gather": "", "reduce_scatter": ""}
WORLD_OPS = {("world", "broadcast", ""), ("world", "barrier", "")}


def _expect(kind: str, ops: dict[str, str]) -> set[tuple[str, str, str]]:
    return {(kind, op, variant) for op, variant in ops.items()}


LAYOUTS = {
    # name: (flags, {kind: (groups, ranks per group)}, expected (kind, op, variant))
    "tp2": (["-tp", "2", "--devices-per-node", "2"], {"tp": (1, 2), "world": (1, 2)},
            _expect("tp", REDUCE_OPS) | WORLD_OPS),
    "dp2-tp2": (["-dp", "2", "-tp", "2", "--devices-per-node", "4"],
                {"tp": (2, 2), "dp": (2, 2), "world": (1, 4)},
                _expect("tp", REDUCE_OPS) | _expect("dp", REDUCE_OPS) | WORLD_OPS),
    "pp2-tp2": (["--profile", "cpu-pp2-tp2"], {"tp": (2, 2), "pp": (2, 2), "world": (1, 4)},
                _expect("tp", REDUCE_OPS) | {("pp", "send_recv", "0->1")} | WORLD_OPS),
    "ep4": (["-dp", "4", "--enable-expert-parallel", "--devices-per-node", "4"],
            {"dp": (1, 4), "ep": (1, 4), "world": (1, 4)},
            _expect("dp", REDUCE_OPS) | {("ep", "all_to_all", "even"),
                                         ("ep", "all_to_all", "uneven")} | WORLD_OPS),
}

FACTOR = {"all_reduce": lambda n: 2 * (n - 1) / n, "all_gather": lambda n: (n - 1) / n,
          "reduce_scatter": lambda n: (n - 1) / n, "all_to_all": lambda n: (n - 1) / n,
          "broadcast": lambda n: 1.0, "send_recv": lambda n: 1.0}


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_every_op_of_every_group_is_right(name, check_comm, validate_report):
    flags, groups, expected = LAYOUTS[name]
    r = check_comm([*flags, *QUICK])
    assert r.rc == 0, r.out + r.err
    assert r.err == ""  # piped: no progress bar, no worker chatter, only the report on stdout
    report = r.report
    validate_report(report)
    assert report["ok"] and report["wrong"] == 0 and report["complete"]
    assert report["deadlines"] == [] and report["failures"] == []
    rows = report["results"]
    assert {(row["kind"], row["op"], row["variant"]) for row in rows} == expected
    for kind, op, variant in expected:
        mine = [row for row in rows if (row["kind"], row["op"], row["variant"]) ==
                (kind, op, variant)]
        count, size = groups[kind]
        assert {row["group"] for row in mine} == set(range(count)), (kind, op)
        if op == "barrier":
            assert len(mine) == count and all(row["busbw_gbps"] is None for row in mine)
            continue
        # every size on every group, every member's result checked and right
        assert len(mine) == count * 2, (kind, op)
        for row in mine:
            assert row["wrong"] == 0 and set(row["wrong_by_rank"].values()) == {0}
            assert row["iters"] == 3 and row["time_us"] > 0
            n = len(row["ranks"])
            assert n == (2 if op == "send_recv" else size)
            assert row["bus_factor"] == pytest.approx(FACTOR[op](n))
            assert row["algbw_gbps"] == pytest.approx(row["bytes"] / (row["time_us"] * 1e3))
            assert row["busbw_gbps"] == pytest.approx(row["algbw_gbps"] * row["bus_factor"])
    # one table per group and a summary line per kind
    for kind, (count, _) in groups.items():
        for g in range(count):
            assert f"{kind}#{g}" in r.out
        assert f"{kind}: {count} group(s) of" in r.out
    assert "check-comm: OK" in r.out
