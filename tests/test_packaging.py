"""Packaging: the sdist builds a wheel with the C modules, and no compiler still installs."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import tarfile
import zipfile
from typing import Any

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _run(*args: str, env: dict[str, str] | None = None, cwd: pathlib.Path | None = None) -> str:
    env = dict(os.environ if env is None else env)
    env.pop("GENEVE_PURE_PYTHON", None)  # the fresh installs must pick their own implementation
    r = subprocess.run(args, capture_output=True, text=True, env=env, cwd=cwd, timeout=600)
    assert r.returncode == 0, f"{' '.join(args)}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout + r.stderr


@pytest.fixture(scope="module")
def sdist(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    out = tmp_path_factory.mktemp("dist")
    _run(sys.executable, "-m", "build", "--sdist", "--outdir", str(out), str(ROOT))
    (path,) = out.glob("geneve_gwlb-*.tar.gz")
    return path


def test_sdist_carries_the_c_sources(sdist: pathlib.Path) -> None:
    with tarfile.open(sdist) as tar:
        names = {pathlib.PurePosixPath(n).name for n in tar.getnames()}
    needed_files = (
        "_checksum.c",
        "_checksum.h",
        "_checksum_cffi.pyi",
        "_batch.c",
        "_batch.h",
        "_flowtable.c",
        "_flowtable.h",
        "_layout.h",
    )
    for needed in (*needed_files, "_batch_cffi.pyi", "_flows_cffi.pyi", "_tun_cffi.pyi",
                   "_tun.c", "_tun.h", "_tun_build.py", "py.typed", "setup.py"):  # fmt: skip
        assert needed in names
    # No tests: they need the repository around them (MANIFEST.in says why).
    with tarfile.open(sdist) as tar:
        assert not [n for n in tar.getnames() if "/tests/" in n or n.endswith(".so")]


def test_wheel_from_sdist_has_the_c_implementation(
    sdist: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(tmp_path), str(sdist))
    (wheel,) = tmp_path.glob("geneve_gwlb-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
    assert any(n.startswith("geneve/_checksum_cffi") and n.endswith(".so") for n in names)
    assert any(n.startswith("geneve/_batch_cffi") and n.endswith(".so") for n in names)
    assert any(n.startswith("geneve/_flows_cffi") and n.endswith(".so") for n in names)
    assert any(n.startswith("geneve/_tun_cffi") and n.endswith(".so") for n in names)
    assert "geneve/py.typed" in names
    with zipfile.ZipFile(wheel) as zf:
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        scripts = zf.read(entry_points).decode()
    for script in ("geneve-appliance", "geneve-replay", "geneve-emulator"):
        assert f"{script} = " in scripts, scripts
    assert {"geneve/_checksum_cffi.pyi", "geneve/_batch_cffi.pyi", "geneve/_flows_cffi.pyi"} <= set(
        names
    )
    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", str(venv))
    _run(str(venv / "bin" / "pip"), "install", "-q", str(wheel))
    out = _run(str(venv / "bin" / "python"), "-c",
               "import geneve.checksum as c; print(c.IMPLEMENTATION)", cwd=tmp_path)  # fmt: skip
    assert out.strip() == "c"


def test_install_without_a_compiler_falls_back(sdist: pathlib.Path, tmp_path: pathlib.Path) -> None:
    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", str(venv))
    env = dict(os.environ, CC="/bin/false", LDSHARED="/bin/false")
    _run(str(venv / "bin" / "pip"), "install", "-q", "--no-cache-dir", str(sdist), env=env)
    probe = (
        "import warnings\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    import geneve.checksum as c\n"
        "print(c.IMPLEMENTATION, any('pure-Python' in str(x.message) for x in w))\n"
        "import geneve\n"
        "print(geneve.checksum.internet_checksum(b'\\x45\\x00\\x00\\x1c'))\n"
    )
    out = _run(str(venv / "bin" / "python"), "-c", probe, cwd=tmp_path).split()
    assert out[:2] == ["python", "True"]
    assert int(out[2]) == 0xBAE3


def _stub_signatures(stub: pathlib.Path) -> dict[str, list[str] | None]:
    """The names class _Lib declares in a .pyi: a function's argument annotations, else None."""
    import ast

    (lib_class,) = (
        node
        for node in ast.parse(stub.read_text()).body
        if isinstance(node, ast.ClassDef) and node.name == "_Lib"
    )
    found: dict[str, list[str] | None] = {}
    for node in lib_class.body:
        if isinstance(node, ast.FunctionDef):
            args = node.args.posonlyargs + node.args.args
            assert node.returns is not None, node.name
            found[node.name] = [ast.unparse(a.annotation) for a in args if a.annotation] + [
                "-> " + ast.unparse(node.returns)
            ]
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            assert ast.unparse(node.annotation) == "Final[int]", node.target.id
            found[node.target.id] = None
    return found


def _python_type(ctype: Any) -> str:
    if ctype.kind == "pointer":
        return "FFI.CData"
    if ctype.kind == "void":
        return "None"
    return "float" if ctype.cname in ("double", "float") else "int"


@pytest.mark.parametrize("module", ["_checksum_cffi", "_batch_cffi", "_flows_cffi", "_tun_cffi"])
def test_type_stubs_describe_the_compiled_modules(module: str) -> None:
    """mypy checks calls into C against the .pyi: it must say what cffi actually compiled."""
    import importlib

    try:
        compiled = importlib.import_module(f"geneve.{module}")
    except ImportError:
        pytest.skip(f"geneve.{module} is not built (no C compiler at install time)")
    ffi, lib = compiled.ffi, compiled.lib
    actual: dict[str, list[str] | None] = {}
    for name in dir(lib):
        value = getattr(lib, name)
        if isinstance(value, int):
            actual[name] = None
            continue
        ctype = ffi.typeof(value)
        # C integers are Python ints, doubles floats; every pointer is cffi data.
        actual[name] = [_python_type(a) for a in ctype.args] + ["-> " + _python_type(ctype.result)]
    assert _stub_signatures(ROOT / "src" / "geneve" / f"{module}.pyi") == actual
