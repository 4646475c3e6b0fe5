"""The appliance benchmark's generator (benchmarks/c/loadgen.c) writes its TCP mixes right.

Its ``--dump-frames`` mode sends nothing, so this needs neither root nor namespaces: the egress
mix read back with geneve's parsers, and the rewrite mixes handed to geneve's own pipeline, whose
replies must be those loadgen checks the daemon's against (``--dump-replies``).
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture(scope="module")
def loadgen(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    if not (shutil.which("gcc") or shutil.which("cc")):
        pytest.skip("needs gcc")
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import appliance

        yield appliance.build(tmp_path_factory.mktemp("loadgen")) / "loadgen"
    finally:
        sys.path.remove(str(BENCHMARKS))


@pytest.mark.parametrize("size", [156, 1500])
def test_mixes_as_geneve_reads_them(loadgen: Path, size: int) -> None:
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import appliance

        appliance.check_egress_mix(loadgen, size)
        appliance.check_rewrite_mix(loadgen, size)
    finally:
        sys.path.remove(str(BENCHMARKS))
