"""The `pypto` console script (also `python -m pypto_serving.cli.entry`): imports the app
lazily so that Ctrl-C while the CLI is still importing ends quietly (exit 130) instead of
printing a KeyboardInterrupt traceback."""

from __future__ import annotations

import sys


def main() -> None:
    try:
        from .main import app
    except KeyboardInterrupt:
        sys.stderr.write("pypto: interrupted\n")
        sys.exit(130)
    app()


if __name__ == "__main__":
    main()
