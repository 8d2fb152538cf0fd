"""Reading a config file within bounds: a regular file of at most 4 MiB, valid UTF-8, parsed
with no duplicate keys, at most 32 levels deep, and (YAML) aliases that expand to at most
100,000 values. Every refusal is one `ConfigFileError` line that says what to change, so a
hostile or mistaken file costs bounded time and memory and never a traceback.
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
from pathlib import Path
from typing import Any

MAX_CONFIG_BYTES = 4 << 20
"""Largest config file read (a complete config is about 3 KiB)."""

MAX_DEPTH = 32
"""Deepest nesting of mappings and lists (a config needs 3: section, field, list)."""

MAX_YAML_VALUES = 100_000
"""Most values a YAML document may hold once its aliases are expanded."""


class ConfigFileError(ValueError):
    """A config file that cannot be read or parsed; the message is one line, without the
    path (the caller puts the path in front)."""


def read_text(path: Path, max_bytes: int = MAX_CONFIG_BYTES) -> str:
    """The file's text, if it is a readable regular file of at most `max_bytes` in UTF-8.

    A FIFO or device is refused before it is opened for reading (opening a FIFO would block,
    a device may never end); the open itself is non-blocking and re-checked, so a file
    swapped in between is refused as well.
    """
    try:
        _check_regular(os.stat(path))
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    except OSError as e:
        raise ConfigFileError(_os_reason(e)) from None
    try:
        info = os.fstat(fd)
        _check_regular(info)
        _check_size(info.st_size, max_bytes)
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(max_bytes + 1)
    except OSError as e:
        raise ConfigFileError(_os_reason(e)) from None
    finally:
        os.close(fd)
    _check_size(len(data), max_bytes)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ConfigFileError(
            f"not valid UTF-8: byte 0x{data[e.start]:02x} at line {line} (offset {e.start}); "
            "save the file as UTF-8") from None


def _check_regular(info: os.stat_result) -> None:
    mode = info.st_mode
    if stat.S_ISREG(mode):
        return
    kind = ("a directory" if stat.S_ISDIR(mode) else "a FIFO (named pipe)" if stat.S_ISFIFO(mode)
            else "a character device" if stat.S_ISCHR(mode) else "a block device"
            if stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode) else "not a file")
    raise ConfigFileError(f"is {kind}, not a regular file; give the path of a config file")


def _check_size(size: int, limit: int) -> None:
    if size > limit:
        hint = "; a complete config is a few KiB" if limit == MAX_CONFIG_BYTES else ""
        raise ConfigFileError(f"is larger than the {limit >> 20} MiB that is read "
                              f"({size:,} bytes or more){hint}")


def _os_reason(e: OSError) -> str:
    if e.errno == errno.ENOENT:
        return "no such file"
    if e.errno in (errno.EACCES, errno.EPERM):
        return "cannot read: permission denied"
    if e.errno == errno.ENOTDIR:
        return "cannot read: a part of the path is a file, not a folder"
    if e.errno == errno.ELOOP:
        return "cannot read: too many levels of symbolic links"
    return f"cannot read: {e.strerror or type(e).__name__}"


# --- parsing ---------------------------------------------------------------------------------

def parse_text(text: str, fmt: str) -> Any:
    """Parse JSON, YAML or TOML text within the bounds above, or raise ConfigFileError."""
    if fmt == "yaml":
        return _parse_yaml(text)
    if fmt == "json":
        _check_bracket_depth(text, _JSON_TOKENS)
        try:
            data = json.loads(text, object_pairs_hook=_unique_keys)
        except json.JSONDecodeError as e:
            raise ConfigFileError(f"not valid JSON: {e.msg} at line {e.lineno}, column "
                                  f"{e.colno}") from None
        except ValueError as e:  # e.g. an integer of more digits than Python converts
            raise ConfigFileError(f"not valid JSON: {_first_line(e)}") from None
    else:
        try:
            import tomllib
        except ModuleNotFoundError:  # Python 3.10
            import tomli as tomllib
        _check_bracket_depth(text, _TOML_TOKENS)
        try:
            data = tomllib.loads(text)
        except ValueError as e:  # TOMLDecodeError, and too-long integers
            raise ConfigFileError(f"not valid TOML: {_first_line(e)}") from None
    _check_depth(data)  # TOML's dotted keys and [a.b.c] headers nest without brackets
    return data


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ConfigFileError(f"duplicate key {key!r} (a key may appear once per mapping; "
                                  "keep one)")
        out[key] = value
    return out


# Tokens that open and close nesting, and the strings and comments to skip over so that a
# bracket inside them does not count. Scanned before parsing because the standard parsers
# recurse per level and end in a RecursionError long before the 4 MiB cap.
_JSON_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"?|[\[\]{}]', re.DOTALL)
_TOML_TOKENS = re.compile(
    r'"""(?:[^\\]|\\.)*?(?:"""|\Z)|\'\'\'.*?(?:\'\'\'|\Z)|"(?:[^"\\\n]|\\.)*"?|\'[^\'\n]*\'?'
    r"|#[^\n]*|[\[\]{}]", re.DOTALL)


def _check_bracket_depth(text: str, tokens: re.Pattern[str]) -> None:
    depth = 0
    for match in tokens.finditer(text):
        token = match.group()
        if token in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                line = text.count("\n", 0, match.start()) + 1
                raise ConfigFileError(_too_deep(line))
        elif token in "]}":
            depth = max(0, depth - 1)


def _too_deep(line: int | None) -> str:
    where = f" at line {line}" if line is not None else ""
    return (f"nested more than {MAX_DEPTH} levels deep{where}; a config has sections of "
            "fields (3 levels at most)")


def _check_depth(data: Any) -> None:
    """Refuse parsed data nested deeper than MAX_DEPTH (iteratively: no recursion)."""
    stack = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            children = value.values()
        elif isinstance(value, list):
            children = value
        else:
            continue
        if depth > MAX_DEPTH:
            raise ConfigFileError(_too_deep(None))
        stack.extend((child, depth + 1) for child in children
                     if isinstance(child, (dict, list)))


# --- YAML ------------------------------------------------------------------------------------

def _parse_yaml(text: str) -> Any:
    import yaml

    loader = _bounded_loader_class()(text)
    try:
        return loader.get_single_data()
    except ConfigFileError:
        raise
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigFileError(f"not valid YAML: {e.problem or e.context}{where}") from None
    except (yaml.YAMLError, ValueError) as e:  # ValueError: e.g. a too-long integer
        raise ConfigFileError(f"not valid YAML: {_first_line(e)}") from None
    finally:
        loader.dispose()


_LOADER: type | None = None


def _bounded_loader_class() -> type:
    """yaml.SafeLoader that counts every node as its aliases expand it (refusing recursive
    aliases and more than MAX_YAML_VALUES values or MAX_DEPTH levels) and refuses
    duplicate keys. Built on first use so that importing core does not import yaml."""
    global _LOADER
    if _LOADER is not None:
        return _LOADER
    import yaml

    class BoundedSafeLoader(yaml.SafeLoader):
        def __init__(self, stream: str):
            super().__init__(stream)
            self._open = 0
            self._expanded: dict[int, tuple[int, int]] = {}  # id(node) -> (values, depth)

        def compose_node(self, parent, index):  # noqa: ANN001, ANN201 (PyYAML's signature)
            if self.check_event(yaml.AliasEvent):
                event = self.peek_event()
                target = self.anchors.get(event.anchor)
                if target is not None and id(target) not in self._expanded:
                    raise ConfigFileError(
                        f"line {event.start_mark.line + 1}: alias *{event.anchor} refers to "
                        "the node it is inside (a recursive alias); write the value out")
            self._open += 1
            if self._open > MAX_DEPTH:
                raise ConfigFileError(_too_deep(self.peek_event().start_mark.line + 1))
            try:
                node = super().compose_node(parent, index)
            finally:
                self._open -= 1
            if id(node) not in self._expanded:
                self._expanded[id(node)] = self._measure(node)
            return node

        def _measure(self, node) -> tuple[int, int]:  # noqa: ANN001
            if isinstance(node, yaml.MappingNode):
                children = [n for pair in node.value for n in pair]
            elif isinstance(node, yaml.SequenceNode):
                children = node.value
            else:
                return 1, 1
            sizes = [self._expanded[id(child)] for child in children]
            values = 1 + sum(s[0] for s in sizes)
            depth = 1 + max((s[1] for s in sizes), default=0)
            line = node.start_mark.line + 1
            if values > MAX_YAML_VALUES:
                raise ConfigFileError(
                    f"line {line}: the document expands to more than {MAX_YAML_VALUES:,} "
                    "values (an alias counts as all it refers to); a config has about 60, "
                    "so use fewer aliases")
            if depth > MAX_DEPTH:
                raise ConfigFileError(_too_deep(line))
            return values, depth

        def construct_mapping(self, node, deep=False):  # noqa: ANN001, ANN201
            if isinstance(node, yaml.MappingNode):
                first: dict[Any, int] = {}
                for key_node, _ in node.value:
                    if key_node.tag == "tag:yaml.org,2002:merge":
                        continue
                    key = self.construct_object(key_node, deep=True)
                    try:
                        seen = first.get(key)
                    except TypeError:  # an unhashable key: PyYAML's own error follows
                        continue
                    line = key_node.start_mark.line + 1
                    if seen is not None:
                        raise ConfigFileError(
                            f"duplicate key {key!r} at line {line} (first at line {seen}); "
                            "a key may appear once per mapping, keep one")
                    first[key] = line
            return super().construct_mapping(node, deep)

    _LOADER = BoundedSafeLoader
    return _LOADER
