"""User-facing configuration errors: every problem of a config, each naming its field."""

from __future__ import annotations

from dataclasses import dataclass

USAGE_ERROR = 2
"""Exit code of every command for a usage or config mistake (nothing was started)."""


@dataclass(frozen=True)
class ConfigIssue:
    """One problem: the dotted field path, the offending value and what to do about it."""

    field: str
    value: object
    message: str
    related: tuple[str, ...] = ()  # other fields the rule read, to name the flags that set them
    origin: str | None = None  # e.g. "from --tensor-parallel-size": flags behind the problem

    def __str__(self) -> str:
        if not self.field:
            return self.message
        value = self.value
        shown = f"{value!r}" if isinstance(value, str) else str(value)
        origin = f" ({self.origin})" if self.origin else ""
        return f"{self.field}={shown}{origin}: {self.message}"


class ConfigError(ValueError):
    """Raised with every issue of a config at once, so one run shows all of them."""

    def __init__(self, issues: list[ConfigIssue] | ConfigIssue, source: str | None = None):
        self.issues: list[ConfigIssue] = [issues] if isinstance(issues, ConfigIssue) else issues
        self.source = source
        super().__init__(self.render())

    def render(self) -> str:
        head = f"invalid config from {self.source}" if self.source else "invalid config"
        n = len(self.issues)
        lines = [f"{head}: {n} problem{'s' if n != 1 else ''}"]
        lines += [f"  - {issue}" for issue in self.issues]
        return "\n".join(lines)
