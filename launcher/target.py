"""What the workers run: a script path or a module, checked before anything is spawned.

Module lookup asks the import system's finders for specs without executing any package
(so `-m torch.distributed.run` does not import torch into the launcher).
"""

from __future__ import annotations

import os
import stat
import sys
from dataclasses import dataclass
from importlib.machinery import ModuleSpec

from .errors import LaunchError


@dataclass(frozen=True)
class Target:
    """A script (absolute path) or a module name, plus the argv the worker sees."""

    value: str
    is_module: bool
    args: tuple[str, ...] = ()

    def command(self, python: str) -> list[str]:
        """The command line that runs this target in a fresh, unbuffered interpreter
        (torchrun's `python -u`)."""
        head = [python, "-u", "-m", self.value] if self.is_module else [python, "-u", self.value]
        return [*head, *self.args]


def check_target(value: str, is_module: bool, args: list[str] | tuple[str, ...] = ()) -> Target:
    """Resolve the target or raise LaunchError saying what is missing and how to fix it."""
    if not value:
        raise LaunchError("no script given; usage: pypto launch [OPTIONS] SCRIPT [ARGS]... "
                          "or pypto launch [OPTIONS] -m MODULE [ARGS]...")
    if is_module:
        _check_module(value)
        return Target(value, True, tuple(args))
    path = os.path.abspath(value)
    if not os.path.exists(path):
        raise LaunchError(f"script {value!r} does not exist (looked for {path}); "
                          "check the path, or pass -m to run a module")
    if os.path.isdir(path) and not os.path.exists(os.path.join(path, "__main__.py")):
        raise LaunchError(f"script {value!r} is a directory without __main__.py; "
                          "give a .py file")
    if not os.path.isdir(path) and not stat.S_ISREG(os.stat(path).st_mode):
        # A FIFO would block every worker's interpreter on open; a device never ends.
        raise LaunchError(f"script {value!r} is not a regular file (a FIFO, device or "
                          "socket); give a .py file")
    if not os.access(path, os.R_OK):
        raise LaunchError(f"script {value!r} is not readable")
    return Target(path, False, tuple(args))


def _check_module(name: str) -> None:
    parts = name.split(".")
    if not all(p.isidentifier() for p in parts):
        raise LaunchError(f"module name {name!r} is not a dotted Python name")
    path = None
    spec: ModuleSpec | None = None
    for i in range(len(parts)):
        full = ".".join(parts[: i + 1])
        spec = _find_spec(full, path)
        if spec is None:
            where = f"in package {'.'.join(parts[:i])!r}" if i else "on sys.path"
            raise LaunchError(f"no module named {full!r} {where}; check the name "
                              "(or run `python -c 'import " + full + "'` to see why)")
        path = spec.submodule_search_locations
        if path is None and i + 1 < len(parts):
            raise LaunchError(f"{full!r} is a module, not a package, so {name!r} cannot exist")
    if spec is not None and spec.submodule_search_locations is not None:
        if _find_spec(f"{name}.__main__", spec.submodule_search_locations) is None:
            raise LaunchError(f"{name!r} is a package without __main__; "
                              "name the module to run inside it")


def _find_spec(fullname: str, path) -> ModuleSpec | None:
    module = sys.modules.get(fullname)
    if module is not None and getattr(module, "__spec__", None) is not None:
        return module.__spec__
    for finder in sys.meta_path:
        find = getattr(finder, "find_spec", None)
        if find is None:
            continue
        try:
            spec = find(fullname, path)
        except (ImportError, ValueError):
            spec = None
        if spec is not None:
            return spec
    return None
