"""Every `$ pypto ...` example in README.md and docs/*.md shows what the command prints now.

Run with PYPTO_UPDATE_SNAPSHOTS=1 to rewrite the examples from the real output.
"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# A fenced block whose first line is `$ pypto ARGS`; the rest of the block is its output.
BLOCK = re.compile(r"(```(?:text)?\n\$ pypto ([^\n]*)\n)(.*?)(```)", re.S)
SKIP = ("launch",)  # commands that start processes are shown, not replayed


def examples(path: Path) -> list[str]:
    return [m.group(2) for m in BLOCK.finditer(path.read_text())
            if shlex.split(m.group(2))[0] not in SKIP]


def render(cli, args: str) -> str:
    r = cli(shlex.split(args))
    return "\n".join(line.rstrip() for line in r.output.splitlines()) + "\n"


@pytest.mark.parametrize("path", [p for p in DOCS if examples(p)], ids=lambda p: p.name)
def test_examples_match_real_output(cli, path):
    text = path.read_text()

    def replace(m: re.Match) -> str:
        if shlex.split(m.group(2))[0] in SKIP:
            return m.group(0)
        return m.group(1) + render(cli, m.group(2)) + m.group(4)

    fresh = BLOCK.sub(replace, text)
    if os.environ.get("PYPTO_UPDATE_SNAPSHOTS"):
        path.write_text(fresh)
    stale = [m.group(2) for m, f in zip(BLOCK.finditer(text), BLOCK.finditer(fresh), strict=True)
             if m.group(3) != f.group(3)]
    assert not stale, (f"{path.name}: output changed for {stale}; "
                       "rerun with PYPTO_UPDATE_SNAPSHOTS=1")
