"""The executor tests' job helpers (jobs.py) as a fixture, loaded once by path."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest


@pytest.fixture(scope="session")
def jobs() -> ModuleType:
    path = Path(__file__).parent / "jobs.py"
    spec = importlib.util.spec_from_file_location("executor_jobs", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
