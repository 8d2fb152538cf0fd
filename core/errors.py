"""User-facing configuration errors: every problem of a config, each naming its field.

What a message echoes is bounded and escaped (`shown`, `one_line`): values are cut to a
short repr, control and invisible characters are written as escapes, and a report lists at
most MAX_LISTED issues, summarising the rest, so a hostile file cannot flood the terminal.
"""

from __future__ import annotations

import reprlib
import unicodedata
from dataclasses import dataclass

USAGE_ERROR = 2
"""Exit code of every command for a usage or config mistake (nothing was started)."""

MAX_LISTED = 20
"""Issues a report lists one by one; the rest are counted."""

MAX_LINE = 400
"""Longest line of a report, in characters (longer ones end in an ellipsis)."""

MAX_VALUE = 80
"""Longest echo of an offending value."""

# Unicode categories written as escapes: controls, format characters (bidi overrides,
# zero-width), line/paragraph separators, surrogates, private use, unassigned.
_HIDDEN = frozenset(("Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"))


def escape(text: str, keep: str = "") -> str:
    """`text` with every control or invisible character (but those in `keep`) written as a
    Python escape."""
    if text.isprintable() and text.isascii():
        return text
    out = []
    for ch in text:
        if ch not in keep and unicodedata.category(ch) in _HIDDEN:
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000
                       else f"\\U{code:08x}")
        else:
            out.append(ch)
    return "".join(out)


def one_line(text: str, limit: int = MAX_LINE) -> str:
    """`text` escaped to one line of at most `limit` characters (an ellipsis marks a cut)."""
    clean = escape(text[: limit + 1])
    return clean if len(clean) <= limit and len(text) <= limit else clean[: limit - 1] + "…"


class _ShortRepr(reprlib.Repr):
    def __init__(self) -> None:
        super().__init__()
        self.maxlevel, self.maxdict, self.maxlist, self.maxtuple = 3, 4, 6, 6
        self.maxset = self.maxfrozenset = self.maxdeque = 6
        self.maxstring, self.maxlong, self.maxother = MAX_VALUE, 40, MAX_VALUE

    def repr_int(self, x: int, level: int) -> str:
        if x.bit_length() > 256:  # repr() itself refuses ints of over 4300 digits
            return f"<an integer of {x.bit_length():,} bits>"
        return super().repr_int(x, level)


_SHORT = _ShortRepr()


def shown(value: object) -> str:
    """A short, escaped repr of a user's value for an error message."""
    return one_line(_SHORT.repr(value), MAX_VALUE + 10)


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
            return one_line(self.message)
        value = self.value
        plain = type(value) in (bool, int, float) and abs(value) < 1 << 256
        text = str(value) if plain else shown(value)
        origin = f" ({self.origin})" if self.origin else ""
        return one_line(f"{one_line(self.field, 120)}={text}{origin}: {self.message}")


class ConfigError(ValueError):
    """Raised with every issue of a config at once, so one run shows all of them."""

    def __init__(self, issues: list[ConfigIssue] | ConfigIssue, source: str | None = None):
        self.issues: list[ConfigIssue] = [issues] if isinstance(issues, ConfigIssue) else issues
        self.source = source
        super().__init__(self.render())

    def render(self) -> str:
        """The report: a head line, then each issue on its line (at most MAX_LISTED)."""
        head = f"invalid config from {self.source}" if self.source else "invalid config"
        n = len(self.issues)
        lines = [one_line(f"{head}: {n:,} problem{'s' if n != 1 else ''}")]
        lines += [f"  - {issue}" for issue in self.issues[:MAX_LISTED]]
        rest = self.issues[MAX_LISTED:]
        if rest:
            unknown = all(i.message.startswith("unknown key") for i in rest)
            what = "unknown keys" if unknown else "problems"
            lines.append(f"  … and {len(rest):,} more {what}")
        return "\n".join(lines)
