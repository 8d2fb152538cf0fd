"""The platform rule: which device kind a job runs on, from facts the caller detected.

One pure function, so that `auto` means the same in the launcher (which counts device files
without importing torch) and in a worker (which asks torch): cuda, then npu, then cpu.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Literal, get_args

Platform = Literal["auto", "cpu", "cuda", "npu"]
PLATFORMS: tuple[str, ...] = get_args(Platform)
ACCELERATORS = ("cuda", "npu")
"""Device kinds besides the CPU, in the order `auto` prefers them."""


class PlatformUnavailableError(RuntimeError):
    """cluster.platform names a device kind this machine does not have."""


def choose_platform(requested: str, present: Collection[str], detected_by: str = "") -> str:
    """The platform to run on: `requested` (one of PLATFORMS) given the accelerator kinds
    `present` on this machine. `auto` takes the first of ACCELERATORS present, else cpu; a
    named accelerator that is not present is an error naming the fix (`detected_by` says how
    the caller looked, for the message)."""
    if requested not in PLATFORMS:
        raise ValueError(f"platform {requested!r} is not one of {', '.join(PLATFORMS)}")
    if requested == "auto":
        return next((p for p in ACCELERATORS if p in present), "cpu")
    if requested != "cpu" and requested not in present:
        how = f" ({detected_by})" if detected_by else ""
        raise PlatformUnavailableError(
            f"cluster.platform={requested!r} but no {requested} device is usable here{how}; "
            "set cluster.platform to 'cpu' (gloo) or 'auto'")
    return requested
