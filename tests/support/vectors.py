"""The real captures (``../shared/vectors``, or ``$GENEVE_VECTORS``), as files and parameters."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def vectors_dir() -> Path:
    """``$GENEVE_VECTORS``, else ``../shared/vectors`` beside the repository."""
    env = os.environ.get("GENEVE_VECTORS")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "vectors"


def vector_files() -> list[Path]:
    folder = vectors_dir()
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix in (".pcap", ".pcapng"))


def vector_params() -> list[Any]:
    """Every capture as a pytest parameter; one skipped placeholder when the folder is absent."""
    files = vector_files()
    if files:
        return [pytest.param(p, id=p.name) for p in files]
    reason = f"no captures in {vectors_dir()} (set GENEVE_VECTORS to their folder)"
    return [pytest.param(None, id="no-vectors", marks=pytest.mark.skip(reason=reason))]
