"""The `pypto` console script itself."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

PYPTO = Path(sys.executable).parent / "pypto"


# A real SIGINT, sent by the process to itself at the moment Python starts importing the
# app: deterministic, where a timer from outside would sometimes land in Python's own start-up.
SIGINT_DURING_IMPORT = """
import os, signal, sys
class Trigger:
    def find_spec(self, name, path=None, target=None):
        if name == "pypto_serving.cli.main":
            sys.meta_path.remove(self)
            os.kill(os.getpid(), signal.SIGINT)
        return None
sys.meta_path.insert(0, Trigger())
sys.argv = ["pypto", "topo", "show"]
from pypto_serving.cli.entry import main
main()
"""


def test_ctrl_c_while_importing_ends_quietly():
    r = subprocess.run([sys.executable, "-c", SIGINT_DURING_IMPORT], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 130, (r.returncode, r.stderr)
    assert r.stderr == "pypto: interrupted\n"
    assert r.stdout == ""


def test_help_lists_the_command_groups():
    r = subprocess.run([str(PYPTO), "--help"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and "launch" in r.stdout and "topo" in r.stdout
