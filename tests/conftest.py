"""Fixtures shared by the tests; the helpers they use live in ``tests/support``."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from support.vectors import vectors_dir

# No deadline: the suite has no timed assertions, and a slow CI machine must not fail it.
settings.register_profile(
    "geneve",
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("GENEVE_HYPOTHESIS_PROFILE", "geneve"))


@pytest.fixture(scope="session")
def vectors() -> Path:
    """The folder of real captures (read-only; never copied into the repository)."""
    folder = vectors_dir()
    if not folder.is_dir():
        pytest.skip(f"capture folder {folder} is absent (set GENEVE_VECTORS to its path)")
    return folder


@pytest.fixture(scope="session")
def tshark() -> str:
    path = shutil.which("tshark")
    if path is None:
        pytest.skip("tshark is not installed")
    return path
