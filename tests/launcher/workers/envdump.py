"""Prints this worker's whole environment (and, under a config, what PYPTO_CONFIG holds).

With an argument DIR it writes DIR/rank<RANK>.json instead: torchrun sends every worker to
one shared pipe, where two long lines can interleave.
"""

import json
import os
import sys

row = {"env": dict(os.environ), "pid": os.getpid()}
if os.environ.get("PYPTO_CONFIG"):
    from pypto_serving.core.loader import load_config

    row["config_world"] = load_config(os.environ["PYPTO_CONFIG"]).parallel.world_size
if len(sys.argv) > 1:
    with open(os.path.join(sys.argv[1], f"rank{os.environ['RANK']}.json"), "w") as f:
        json.dump(row, f)
else:
    print(json.dumps(row))
