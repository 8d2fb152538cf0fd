"""User-facing launcher errors: raised before anything is spawned, shown as one line."""

from __future__ import annotations

from ..core.errors import USAGE_ERROR


class LaunchError(Exception):
    """A launch that cannot start (bad flag, missing script, port in use, master unreachable).

    The message is the whole user-facing line: what was wrong and how to fix it. Every such
    error is raised before a worker exists, so the CLI maps it to exit code 2.
    """

    def __init__(self, message: str, code: int = USAGE_ERROR):
        super().__init__(message)
        self.code = code

    def __str__(self) -> str:
        return self.args[0]
