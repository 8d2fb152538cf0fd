"""Run with -m: prints its module name, argv and rank."""

import json
import os
import sys

print(json.dumps({"rank": int(os.environ["RANK"]), "main": __name__, "argv": sys.argv[1:],
                  "argv0": sys.argv[0]}))
