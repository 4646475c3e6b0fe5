"""The layers a newcomer sees stay layered: no module imports one from a layer above it."""

from __future__ import annotations

import ast
import pathlib
import sys

SRC = pathlib.Path(__file__).resolve().parents[1] / "src" / "geneve"

# Lowest first. The package __init__ is the facade over all of them and is not ranked.
LAYERS: dict[str, int] = {
    "_errors": 0, "_layout": 0, "_pychecksum": 0, "checksum": 0, "_checksum_cffi": 0,
    "_headers": 0, "_fixup": 0, "_packet": 0, "_pcap": 0, "_reject": 0,
    "inspect": 0, "inspect._errors": 0, "inspect._tls": 0, "inspect._http": 0, "inspect._dns": 0,
    "_flows": 1, "_flows_cffi": 1, "_seq": 1, "_stream": 1, "_pipeline": 1, "rules": 1,
    "rules.reference": 1, "rules.egress": 1, "_loader": 1,
    "_health": 2, "_notify": 2, "_handover": 2, "_batch_cffi": 2, "_steering": 2,
    "_sockets": 2, "_transport": 2, "_worker": 2, "_appliance": 2, "_tun": 2, "_tun_cffi": 2,
    "appliance": 3, "replay": 3, "emulator": 3, "_emulator": 3,
    "_emulator.namespaces": 3, "_emulator.checker": 3, "_emulator.flows": 3,
    "_emulator.topology": 3, "_emulator.dataplane": 3, "_emulator.emulator": 3,
    "_emulator.console": 3,
}  # fmt: skip
IO_MODULES = {"selectors", "signal", "multiprocessing", "threading", "subprocess"}
# The codec may use the socket module's address conversions (inet_pton...), never a socket.
SOCKET_MAKERS = {"socket", "socketpair", "create_connection", "create_server", "fromfd"}


def _module_name(path: pathlib.Path) -> str:
    rel = path.relative_to(SRC).with_suffix("")
    parts = [p for p in rel.parts if p != "__init__"]
    return ".".join(parts)


def _imports(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    package = (
        _module_name(path).rpartition(".")[0]
        if path.name != "__init__.py"
        else (_module_name(path))
    )
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".") if package else []
                base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                target = ".".join([*base, node.module] if node.module else base)
                names = [target] if node.module else [a.name for a in node.names]
                found.update(n for n in names if n)
            elif node.module:
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", "") == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            found.add(str(node.args[0].value).removeprefix("geneve."))
    return found


def test_every_module_is_ranked() -> None:
    modules = {_module_name(p) for p in SRC.rglob("*.py") if not p.name.endswith("_build.py")}
    modules.discard("")
    assert modules - {"__init__"} <= set(LAYERS), modules - set(LAYERS)


def test_no_module_imports_a_higher_layer() -> None:
    for path in SRC.rglob("*.py"):
        name = _module_name(path)
        if not name or path.name.endswith("_build.py"):
            continue
        rank = LAYERS[name]
        for target in _imports(path):
            target = target.removeprefix("geneve.")
            if target in LAYERS:
                assert LAYERS[target] <= rank, f"{name} (layer {rank}) imports {target}"


def test_the_codec_and_pipeline_do_no_io() -> None:
    for path in SRC.rglob("*.py"):
        name = _module_name(path)
        if name and LAYERS.get(name, 99) <= 1:
            bad = _imports(path) & IO_MODULES
            assert not bad, f"{name} imports {bad}: sockets and workers belong to the appliance"
            for node in ast.walk(ast.parse(path.read_text())):
                if (
                    isinstance(node, ast.Attribute)
                    and isinstance(node.value, ast.Name)
                    and node.value.id == "socket"
                ):
                    assert node.attr not in SOCKET_MAKERS, f"{name} opens a socket"


def test_bundled_rules_use_the_public_packet_api_only() -> None:
    # What our own rules need to be fast, a user's rule has too: no private attribute reads.
    for path in (SRC / "rules").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            name = node.attr if isinstance(node, ast.Attribute) else ""
            if name[:1] == "_" and name[:2] != "__":
                raise AssertionError(f"{path.name} reads .{name}")


def test_import_geneve_loads_the_codec_and_pipeline_only() -> None:
    # A codec user pays for no sockets, workers or signals; the appliance comes on first use.
    import subprocess

    script = (
        "import sys, geneve\n"
        "heavy = ('geneve._appliance', 'geneve._batch_cffi', 'multiprocessing', 'pwd', 'signal')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
        "print(geneve.Appliance.__name__, 'Appliance' in dir(geneve), geneve.ApplianceError)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert out[0] == "[]"
    assert out[1].startswith("Appliance True <class 'geneve._appliance.ApplianceError'>")


def test_the_emulator_checker_imports_nothing_of_the_codec() -> None:
    """The emulator's checker is an independent judge: built on the codec, it would share its
    bugs. It imports the standard library only (its protocol constants are its own)."""
    path = SRC / "_emulator" / "checker.py"
    tree = ast.parse(path.read_text())
    assert not any(isinstance(n, ast.ImportFrom) and n.level for n in ast.walk(tree))
    outside = {name.split(".")[0] for name in _imports(path)} - set(sys.stdlib_module_names)
    assert not outside, f"_emulator.checker imports {outside}"


def test_frame_counters_are_written_by_the_pipeline_only() -> None:
    # A complement to the appliance tests that check the counters' values: no module of the
    # appliance layer writes a Stats counter itself; it asks the Pipeline (count_*) instead.
    from geneve import Stats

    fields = set(Stats.COUNTERS) | {"drops", "malformed_reasons", "last_error"}
    for path in SRC.rglob("*.py"):
        name = _module_name(path)
        if LAYERS.get(name) != 2:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[ast.expr] = []
            if isinstance(node, ast.Assign):
                targets = node.targets
            elif isinstance(node, ast.AugAssign):
                targets = [node.target]
            for target in targets:
                if isinstance(target, ast.Subscript):
                    target = target.value
                assert not (isinstance(target, ast.Attribute) and target.attr in fields), (
                    f"{name}:{target.lineno} writes a Stats counter"
                )
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                assert node.func.attr != "drop", f"{name}:{node.func.lineno} counts a drop"
