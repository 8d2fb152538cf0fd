"""The data shown in docs/parallelism.md is what core computes.

Each `<!-- check: KIND ARGS -->` comment in the page is followed by a JSON block; this test
recomputes the block from core and compares.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from pypto_serving.core.loader import load_profile
from pypto_serving.core.placement import ExpertPlacement, layer_partition
from pypto_serving.core.topology import resolve_topology

DOC = Path(__file__).resolve().parents[2] / "docs" / "parallelism.md"
CHECK = re.compile(r"<!-- check: (\w+) ([^>]*?) -->\s*```json\n(.*?)```", re.S)


def computed(kind: str, args: list[str]):
    if kind == "rank_info":
        profile, rank = args
        return resolve_topology(load_profile(profile)).rank_info(int(rank)).to_dict()
    if kind == "layer_partition":
        layers, stages = map(int, args)
        return [[r.start, r.stop] for r in layer_partition(layers, stages, None)]
    if kind == "placement":
        experts, ep_size = map(int, args)
        return {s: [list(held) for held in ExpertPlacement(experts, ep_size, s).table()]
                for s in ("linear", "round_robin")}
    raise AssertionError(f"unknown check kind {kind!r} in {DOC.name}")


CHECKS = CHECK.findall(DOC.read_text(encoding="utf-8"))


def test_the_page_has_checked_blocks():
    assert {kind for kind, _, _ in CHECKS} == {"rank_info", "layer_partition", "placement"}


@pytest.mark.parametrize("kind,args,block", CHECKS, ids=[f"{k} {a}" for k, a, _ in CHECKS])
def test_block_equals_what_core_computes(kind, args, block):
    assert json.loads(block) == computed(kind, args.split())
