"""Prints this worker's whole environment (and, under a config, what PYPTO_CONFIG holds)."""

import json
import os

row = {"env": dict(os.environ), "pid": os.getpid()}
if os.environ.get("PYPTO_CONFIG"):
    from pypto_serving.core.loader import load_config

    row["config_world"] = load_config(os.environ["PYPTO_CONFIG"]).parallel.world_size
print(json.dumps(row))
