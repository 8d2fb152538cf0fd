"""The `pypto` console script itself."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

PYPTO = Path(sys.executable).parent / "pypto"


def test_ctrl_c_while_importing_ends_quietly():
    proc = subprocess.Popen([str(PYPTO), "topo", "show"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    time.sleep(0.04)  # inside the ~0.15 s of imports; there is no event to wait for
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode in (130, -signal.SIGINT), (proc.returncode, err)
    assert "Traceback" not in err


def test_help_lists_the_command_groups():
    r = subprocess.run([str(PYPTO), "--help"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and "launch" in r.stdout and "topo" in r.stdout
