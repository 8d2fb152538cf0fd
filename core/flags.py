"""Command-line flags with vLLM's spelling, mapped onto config fields, defined once.

Every command that takes a config accepts these; their help text is the field's own
description, so the flag, the schema and the file format never drift apart.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic.fields import FieldInfo

from .config import ServingConfig


@dataclass(frozen=True)
class ConfigFlag:
    """One flag: its long name, optional short alias, and the dotted config path it sets."""

    name: str
    path: str
    short: str | None = None

    @property
    def field_info(self) -> FieldInfo:
        section, field = self.path.split(".")
        model = ServingConfig.model_fields[section].annotation
        return model.model_fields[field]

    @property
    def help(self) -> str:
        """The field description's first sentence: what the value means."""
        text = " ".join((self.field_info.description or "").split("Example:")[0].split())
        first = text.split("; ")[0].split(". ")[0].rstrip(".")
        if self.choices:  # the choices are listed by the caller; drop their explanations
            first = first.split(": ")[0]
        return first + "."

    @property
    def choices(self) -> tuple[str, ...]:
        args = typing.get_args(self.field_info.annotation)
        return tuple(a for a in args if isinstance(a, str))

    @property
    def value_type(self) -> type:
        """bool, int or str: the field's type with Optional and Annotated stripped."""
        ann = self.field_info.annotation
        union = typing.get_origin(ann) in (typing.Union, types.UnionType)
        options = typing.get_args(ann) if union else (ann,)
        kinds = {typing.get_args(a)[0] if typing.get_origin(a) is typing.Annotated else a
                 for a in options}
        for kind in (bool, int):
            if kind in kinds:
                return kind
        return str


CONFIG_FLAGS: tuple[ConfigFlag, ...] = (
    ConfigFlag("--data-parallel-size", "parallel.data_parallel_size", "-dp"),
    ConfigFlag("--tensor-parallel-size", "parallel.tensor_parallel_size", "-tp"),
    ConfigFlag("--pipeline-parallel-size", "parallel.pipeline_parallel_size", "-pp"),
    ConfigFlag("--data-parallel-size-local", "parallel.data_parallel_size_local"),
    ConfigFlag("--enable-expert-parallel", "parallel.enable_expert_parallel"),
    ConfigFlag("--expert-placement-strategy", "parallel.expert_placement_strategy"),
    ConfigFlag("--all2all-backend", "parallel.all2all_backend"),
    ConfigFlag("--data-parallel-backend", "parallel.data_parallel_backend"),
    ConfigFlag("--data-parallel-load-balance", "parallel.data_parallel_load_balance"),
    ConfigFlag("--model", "model.path"),
    ConfigFlag("--nnodes", "cluster.nnodes"),
    ConfigFlag("--devices-per-node", "cluster.devices_per_node"),
    ConfigFlag("--platform", "cluster.platform"),
)


def overrides_from_flags(values: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """{'parallel.tensor_parallel_size': 4} -> {'parallel': {'tensor_parallel_size': 4}};
    flags left unset (None) are dropped."""
    nested: dict[str, dict[str, Any]] = {}
    for path, value in values.items():
        if value is None:
            continue
        section, field = path.split(".")
        nested.setdefault(section, {})[field] = value
    return nested
