"""Bad check-comm options: exit 2 and a message naming the flag, before anything starts."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize("args, message", [
    (["--sizes", "3XB"], "--sizes 3XB: is not a size"),
    (["--sizes", "1MB:8B"], "--sizes 1MB:8B: the first size is larger than the last"),
    (["--sizes", "8B:1MB:x1"], "--sizes 8B:1MB:x1: the step is a whole factor of 2 or more"),
    (["--groups", "foo"], "--groups foo: unknown foo; choose from tp, pp, dp, ep, world"),
    (["--ops", "all_reduce,gossip"], "--ops all_reduce,gossip: unknown gossip"),
    (["--groups", "tp", "--ops", "all_to_all"],
     "--ops all_to_all: no chosen group runs all_to_all (all_to_all runs on ep)"),
    (["-tp", "2", "--devices-per-node", "2", "--groups", "ep"],
     "--groups ep: this layout has no EP group: parallel.enable_expert_parallel is false"),
    (["--inject", "hang:9"], "--inject hang:9: rank 9 is outside the world (0..3)"),
    (["--inject", "melt:1"], "--inject melt:1: use slow:RANK[:MS], hang:RANK"),
    (["--inject", "slow:1:-5"], "--inject slow:1:-5: the delay is a positive number"),
    (["--iters", "0"], "--iters 0: must be at least 1"),
    (["--timeout", "0"], "--timeout 0.0: must be a positive number of seconds"),
    (["--json", "/no/such/dir/r.json"], "--json /no/such/dir/r.json: folder /no/such/dir"),
])
def test_bad_options_exit_2_naming_the_flag(cli, args, message):
    r = cli(["check-comm", *args])
    assert r.exit_code == 2, r.output
    assert f"error: {message}" in r.output
    assert "Traceback" not in r.output


def test_a_bad_layout_is_the_config_report(cli):
    r = cli(["check-comm", "-tp", "3"])
    assert r.exit_code == 2
    assert "parallel.tensor_parallel_size=3" in r.output
