"""Writing a config back out: JSON, YAML and TOML, with each field's description as a comment.

What `pypto config init` writes and `config validate --show` prints; loading the output
gives back the same config (round trip).
"""

from __future__ import annotations

import json
import sys
from typing import Any

from pydantic import BaseModel

from .config import ServingConfig

OUTPUT_FORMATS = ("yaml", "toml", "json")


def dump_config(cfg: ServingConfig, fmt: str = "yaml", comments: bool = True) -> str:
    """Every field at its value, in `fmt`; YAML and TOML carry descriptions as comments.

    Loading the text gives back `cfg` for every value the schema admits (a property test
    checks it): strings are quoted with escapes for what each format cannot hold raw,
    floats are written so that they read back as the same float (and as floats).
    """
    if fmt == "json":
        return json.dumps(cfg.model_dump(mode="json"), indent=2, ensure_ascii=False) + "\n"
    if fmt not in OUTPUT_FORMATS:
        raise ValueError(f"unknown format {fmt!r}; use yaml, toml or json")
    scalar = _yaml_scalar if fmt == "yaml" else _toml_scalar
    lines: list[str] = []
    for section, sec_field in ServingConfig.model_fields.items():
        model: BaseModel = getattr(cfg, section)
        if lines:
            lines.append("")
        if comments:
            lines += _comment(sec_field.description)
        lines.append(f"{section}:" if fmt == "yaml" else f"[{section}]")
        indent = "  " if fmt == "yaml" else ""
        for name, field in type(model).model_fields.items():
            value = getattr(model, name)
            if comments:
                lines += [indent + c for c in _comment(field.description)]
            if fmt == "toml" and value is None:
                # TOML has no null: an absent key means the default, which is null here.
                assert field.default is None, f"{section}.{name}: TOML cannot write null"
                lines.append(f"# {name} = (unset)")
            else:
                lines.append(f"{indent}{name}{': ' if fmt == 'yaml' else ' = '}{scalar(value)}")
    return "\n".join(lines) + "\n"


def _comment(text: str | None) -> list[str]:
    return [f"# {line.strip()}" for line in (text or "").splitlines() if line.strip()]


def _yaml_scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, BaseModel):  # a nested section (model.rope_scaling): a flow mapping
        return "{" + ", ".join(f"{k}: {_yaml_scalar(v)}"
                               for k, v in value.model_dump(mode="json").items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_yaml_scalar(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        text = repr(value)  # shortest repr that reads back as the same float
        # YAML 1.1 (PyYAML) reads '1e+16' as a string: a float needs its dot.
        return text.replace("e", ".0e", 1) if "e" in text and "." not in text else text
    if isinstance(value, str):
        return _quoted(value, _YAML_ESCAPES)
    return str(value)


def _toml_scalar(value: Any) -> str:
    if isinstance(value, BaseModel):  # a nested section: an inline table
        return "{ " + ", ".join(f"{k} = {_toml_scalar(v)}"
                                for k, v in value.model_dump(mode="json").items()) + " }"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_scalar(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)  # '1e+16', '5e-324' and '-0.0' are TOML floats as written
    if isinstance(value, str):
        return _quoted(value, _TOML_ESCAPES)
    return str(value)


_YAML_ESCAPES = {"\\": "\\\\", '"': '\\"', "\0": "\\0", "\t": "\\t", "\n": "\\n",
                 "\r": "\\r", "\x1b": "\\e"}
_TOML_ESCAPES = {"\\": "\\\\", '"': '\\"', "\b": "\\b", "\t": "\\t", "\n": "\\n",
                 "\f": "\\f", "\r": "\\r"}


def _quoted(text: str, escapes: dict[str, str]) -> str:
    """A double-quoted string, valid in YAML and TOML: backslash, quote and every character
    Python does not call printable (controls, line separators, BOM, unassigned) escaped,
    the rest (accents, CJK, emoji) written as they are (files are UTF-8)."""
    out = []
    for ch in text:
        if ch in escapes:
            out.append(escapes[ch])
        elif ch.isprintable():
            out.append(ch)
        else:
            code = ord(ch)
            out.append(f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
    return '"' + "".join(out) + '"'


def config_json_schema() -> dict[str, Any]:
    """JSON Schema of the whole serving config, for editors and `jsonschema`: it admits
    exactly the values the loader's field checks admit (the cross-field rules, such as TP
    dividing the heads, are beyond JSON Schema and checked by `pypto config validate`)."""
    schema = _standard(ServingConfig.model_json_schema())
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": "pypto-serving config", **schema}


# pydantic writes a Field's bounds under their Python names where it cannot fold them into
# the type (a bound on `Count | None`, or on a list's items), and JSON Schema ignores
# unknown keywords: so `"ge": 1` let 0 through. These are the standard spellings.
_BOUND_KEYWORDS = {"ge": "minimum", "gt": "exclusiveMinimum", "le": "maximum",
                   "lt": "exclusiveMaximum"}
_VALUE_KEYWORDS = ("default", "enum", "const", "examples")  # data, not schema: left alone
_LARGEST_FLOAT = sys.float_info.max


def _standard(node: Any) -> Any:
    """A copy of a pydantic JSON Schema with standard bound keywords, and every number
    bounded to finite floats (the loader refuses inf; YAML's .inf and TOML's inf exist)."""
    if isinstance(node, list):
        return [_standard(item) for item in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _VALUE_KEYWORDS:
            out[key] = value
        elif key in ("properties", "$defs", "patternProperties"):
            out[key] = {name: _standard(sub) for name, sub in value.items()}
        else:
            out[_BOUND_KEYWORDS.get(key, key)] = _standard(value)
    if out.get("type") == "number":
        if "maximum" not in out and "exclusiveMaximum" not in out:
            out["maximum"] = _LARGEST_FLOAT
        if "minimum" not in out and "exclusiveMinimum" not in out:
            out["minimum"] = -_LARGEST_FLOAT
    return out
