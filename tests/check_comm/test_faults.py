"""Each injected fault is found and names its rank: corrupt data, a hang (ended within the
deadline by the store's record of who arrived), a straggler, a dead worker."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.timeout(200)

QUICK = ["--sizes", "64B,4KB", "--iters", "3", "--warmup", "1"]
TP2 = ["-tp", "2", "--devices-per-node", "2"]
CPU_DEMO = ["--profile", "cpu-demo"]  # DP 2 x TP 2 + EP 4


def test_corrupt_data_is_counted_and_traced_to_its_rank(check_comm, validate_report):
    r = check_comm([*CPU_DEMO, *QUICK, "--inject", "corrupt:1"])
    assert r.rc == 1, r.out + r.err
    report = r.report
    validate_report(report)
    assert not report["ok"] and report["wrong"] > 0
    wrong = [row for row in report["results"] if row["wrong"]]
    # rank 1 sends one damaged element per part: every group it is in sees it ...
    assert {row["kind"] for row in wrong} == {"tp", "dp", "ep"}
    assert all(1 in row["ranks"] for row in wrong)
    # ... and none it is not in (TP group 1 = ranks 2, 3; broadcast's root is rank 0)
    clean = [row for row in report["results"] if 1 not in row["ranks"]
             or row["op"] in ("broadcast", "barrier")]
    assert clean and all(row["wrong"] == 0 for row in clean)
    # where the answer has one part per sender, the wrong part names rank 1
    traced = [row for row in wrong if row["op"] in ("all_gather", "all_to_all")]
    assert traced and all(set(row["wrong_from"]) == {"1"} for row in traced)
    gather = next(row for row in traced if row["kind"] == "tp" and row["op"] == "all_gather")
    assert gather["wrong_by_rank"] == {"0": 1, "1": 1}  # one element of its part, both ranks
    assert "CORRUPT DATA from rank(s) 1" in r.out
    assert "WRONG  tp#0 all_gather 64 B: 2 wrong element(s)" in r.out


def test_a_hang_ends_at_the_deadline_naming_the_rank_that_never_arrived(check_comm,
                                                                        validate_report):
    timeout = 2.0
    r = check_comm([*CPU_DEMO, *QUICK, "--timeout", str(timeout), "--inject", "hang:3"])
    assert r.rc == 1, r.out + r.err
    report = r.report
    validate_report(report)
    deadlines = report["deadlines"]
    assert deadlines and report["failures"] == []
    # rank 3 never arrived anywhere: every wait is rooted at it, directly or through rank 2
    # (waiting for 3 in TP group 1 and so missing from DP group 0)
    assert all(d["root"] == [3] for d in deadlines)
    # each report leads to a wait rank 3 is missing from: TP group 1's first step, or a DP
    # step (whichever rank's deadline fired first, the launcher stops the rest)
    for d in deadlines:
        direct = [w for w in [d, *d["chain"]] if 3 in w.get("missing", ())]
        assert direct and all(w["step"] == 0 or w["kind"] == "dp" for w in direct), d
    for d in deadlines:  # each detected when its deadline passed
        assert d["timeout_s"] == timeout and d["detected_by"]
        assert timeout <= d["waited_s"] < timeout + 1.0
    # it ended at the deadline, not at gloo's timeout (launch and import included)
    assert r.elapsed < 60
    assert "rank(s) 3 never arrived" in r.out
    assert "at the root of the wait: rank(s) 3" in r.out


def test_a_hang_is_named_even_after_rank_0_finished_its_own_steps(check_comm,
                                                                   validate_report):
    # TP only: rank 0 (TP group 0, which hosts the job's store) is done while rank 2 still
    # waits for rank 3 in TP group 1; rank 0 stays until every rank has left, so rank 2
    # can still read from the store who never arrived
    r = check_comm([*CPU_DEMO, "--groups", "tp", "--sizes", "64B", "--iters", "1",
                    "--warmup", "0", "--timeout", "2", "--inject", "hang:3"])
    assert r.rc == 1, r.out + r.err
    report = r.report
    validate_report(report)
    assert [(d["detected_by"], d["missing"], d["root"]) for d in report["deadlines"]] == [
        ([2], [3], [3])]
    assert "rank(s) 3 never arrived (rank(s) 2 waited for them)" in r.out


def test_a_slow_rank_is_flagged_as_the_straggler_of_each_of_its_groups(check_comm,
                                                                       validate_report):
    # five timed calls: four gaps per rank and step, so one preemption of a busy machine
    # does not make a median
    r = check_comm([*CPU_DEMO, "--sizes", "64B,4KB", "--iters", "5", "--warmup", "1",
                    "--inject", "slow:2:60"])
    assert r.rc == 0, r.out + r.err  # slow is not wrong: the results are all right
    report = r.report
    validate_report(report)
    assert report["wrong"] == 0
    flagged = {(s["kind"], s["group"], s["rank"]) for s in report["stragglers"]}
    # rank 2 is in tp#1, dp#0, ep#0 and world#0; nobody else is blamed
    assert flagged == {("tp", 1, 2), ("dp", 0, 2), ("ep", 0, 2), ("world", 0, 2)}
    for s in report["stragglers"]:
        assert s["median_excess_gap_us"] == pytest.approx(60_000, rel=0.3)
    assert "STRAGGLER  rank 2 in tp#1" in r.out


def test_a_dead_worker_is_reported_by_the_launcher(check_comm, validate_report):
    r = check_comm([*TP2, *QUICK, "--timeout", "10", "--inject", "crash:1"])
    assert r.rc == 1
    validate_report(r.report)
    assert not r.report["ok"] and not r.report["complete"]
    assert r.report["failures"][0]["rank"] == 1
    assert r.report["failures"][0]["how"] == "killed by SIGKILL"
    assert "rank 1 (local rank 1, node 0) killed by SIGKILL" in r.err  # launcher's report
    assert "FAILED  rank 1 killed by SIGKILL" in r.out
