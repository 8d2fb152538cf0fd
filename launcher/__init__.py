"""pypto_serving.launcher: torchrun-style per-device workers, fast, supervised.

`launch(LaunchSpec(...)) -> LaunchResult` is the programmatic entry; `pypto launch` is the CLI.
Exports are lazy so `python -m pypto_serving.launcher.zygote` imports nothing it does not need.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["LaunchError", "LaunchEvent", "LaunchResult", "LaunchSpec", "ServiceLaunch",
           "WorkerEnd", "launch", "service_plan"]

if TYPE_CHECKING:  # pragma: no cover
    from .api import launch
    from .errors import LaunchError
    from .group_policy import LaunchEvent
    from .plan import LaunchSpec
    from .service import ServiceLaunch, service_plan
    from .supervisor import LaunchResult, WorkerEnd

_HOME = {
    "launch": "api",
    "LaunchError": "errors",
    "LaunchSpec": "plan",
    "LaunchResult": "supervisor",
    "WorkerEnd": "supervisor",
    "ServiceLaunch": "service",
    "service_plan": "service",
    "LaunchEvent": "group_policy",
}


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(name)
    from importlib import import_module

    return getattr(import_module(f".{_HOME[name]}", __name__), name)
