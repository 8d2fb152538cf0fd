"""The scheduler and block manager (and the rest of engine/ but the worker) import no torch."""

from __future__ import annotations

import subprocess
import sys


def test_engine_modules_do_not_import_torch():
    code = ("import sys\n"
            "import pypto_serving.engine.scheduler, pypto_serving.engine.block_manager\n"
            "import pypto_serving.engine.engine, pypto_serving.engine.server\n"
            "import pypto_serving.engine.tokenizer, pypto_serving.engine.output\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'numpy'))\n"
            "print(bad)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
