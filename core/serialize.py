"""Writing a config back out: JSON, YAML and TOML, with each field's description as a comment.

What `pypto config init` writes and `config validate --show` prints; loading the output
gives back the same config (round trip).
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel

from .config import ServingConfig

OUTPUT_FORMATS = ("yaml", "toml", "json")


def dump_config(cfg: ServingConfig, fmt: str = "yaml", comments: bool = True) -> str:
    """Every field at its value, in `fmt`; YAML and TOML carry descriptions as comments."""
    if fmt == "json":
        return json.dumps(cfg.model_dump(mode="json"), indent=2) + "\n"
    if fmt not in OUTPUT_FORMATS:
        raise ValueError(f"unknown format {fmt!r}; use yaml, toml or json")
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
            if fmt == "yaml":
                lines.append(f"{indent}{name}: {_scalar(value)}")
            elif value is None:  # TOML has no null: an absent key means the default (null)
                lines.append(f"# {name} = (unset)")
            else:
                lines.append(f"{name} = {_scalar(value)}")
    return "\n".join(lines) + "\n"


def _comment(text: str | None) -> list[str]:
    return [f"# {line.strip()}" for line in (text or "").splitlines() if line.strip()]


def _scalar(value: Any) -> str:
    # JSON scalars and flow lists are valid YAML and valid TOML (strings, ints, floats, bools).
    if value is None:
        return "null"
    if isinstance(value, tuple):
        value = list(value)
    return json.dumps(value)


def config_json_schema() -> dict[str, Any]:
    """JSON Schema of the whole serving config, for editors and `jsonschema`."""
    schema = ServingConfig.model_json_schema()
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": "pypto-serving config", **schema}
