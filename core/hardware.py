"""Hardware profiles: a node's devices (memory, bandwidth, peak FLOP/s) and its two link
kinds (inside a node, between nodes), read from profiles/hardware/*.yaml.

The figures are data with their source noted in each file, never constants in code; a
`pypto check-comm --json` report can replace the link figures with measured ones
(`core.calibration`).
"""

from __future__ import annotations

import difflib
from importlib import resources
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import ConfigError, ConfigIssue
from .loader import issues_from_validation, read_mapping

_SCHEMA = ConfigDict(extra="forbid", frozen=True)
DEFAULT_HARDWARE = "h200-nvlink-ib"

LinkKind = Literal["intra_node", "inter_node"]


class LinkSpec(BaseModel):
    """One link kind under the alpha-beta model: time = latency + bytes / bandwidth."""

    model_config = _SCHEMA

    bandwidth_gbps: float = Field(gt=0, allow_inf_nan=False)
    """Bandwidth each way per device, GB/s (1e9 bytes/s)."""

    latency_us: float = Field(ge=0, allow_inf_nan=False)
    """Per-message latency (alpha), microseconds."""

    def seconds(self, nbytes: float, messages: float = 1.0) -> float:
        return messages * self.latency_us * 1e-6 + nbytes / (self.bandwidth_gbps * 1e9)


class DeviceSpec(BaseModel):
    """One device: memory, memory bandwidth and peak dense FLOP/s per dtype."""

    model_config = _SCHEMA

    memory_gib: float = Field(gt=0, allow_inf_nan=False)
    memory_bandwidth_gbps: float = Field(gt=0, allow_inf_nan=False)
    peak_tflops: dict[str, float]

    @property
    def memory_bytes(self) -> int:
        return int(self.memory_gib * (1 << 30))

    def peak_flops(self, dtype: str) -> float:
        return self.peak_tflops[dtype] * 1e12


class LinksSpec(BaseModel):
    model_config = _SCHEMA

    intra_node: LinkSpec
    inter_node: LinkSpec


class HardwareSpec(BaseModel):
    """A node shape: devices per node, the device, and the links."""

    model_config = _SCHEMA

    name: str
    description: str = ""
    platform: Literal["cpu", "cuda", "npu"]
    devices_per_node: int = Field(ge=1)
    device: DeviceSpec
    links: LinksSpec
    layer_overhead_us: float = Field(0.0, ge=0, allow_inf_nan=False)
    """Host time per layer per step that no roofline sees (kernel launches, dispatch)."""
    compute_slots_per_node: int | None = Field(None, ge=1)
    """Ranks of a node that compute at full speed at once (a CPU host's cores, when its
    workers share them); null: every device computes on its own."""
    expert_overhead_us: float = Field(0.0, ge=0, allow_inf_nan=False)
    """Host time per expert that runs in a MoE layer (its own matmuls, launched one by one)."""

    def link(self, kind: LinkKind) -> LinkSpec:
        return getattr(self.links, kind)


def _folder():
    return resources.files("pypto_serving.profiles") / "hardware"


def hardware_profile_names() -> list[str]:
    return sorted(p.name[:-5] for p in _folder().iterdir() if p.name.endswith(".yaml"))


def hardware_profile(name: str) -> HardwareSpec:
    """A shipped hardware profile by name (ConfigError naming the choices otherwise)."""
    names = hardware_profile_names()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise ConfigError(ConfigIssue(
            "", None, f"unknown hardware profile {name!r}; {hint}shipped: {', '.join(names)}"))
    with resources.as_file(_folder() / f"{name}.yaml") as path:
        data = read_mapping(path)
    try:
        return HardwareSpec.model_validate(data)
    except ValidationError as e:
        raise ConfigError(issues_from_validation(e, HardwareSpec),
                          f"hardware profile {name}") from None
