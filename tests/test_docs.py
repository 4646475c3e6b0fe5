"""The examples in docs/*.md run: every ```python block, in order, one namespace per file.

A block fenced as ```python is a promise that it runs as written; one that only illustrates
(it needs root, a network or a running appliance) is fenced ```py instead and is not run
(``support.docs`` finds them).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from support.docs import DOCS, python_blocks


def test_block_extraction() -> None:
    text = "a\n```python\nx = 1\n```\n```py\nnot run\n```\n  ```python\n  y = x\n  ```\n"
    assert python_blocks(text) == [(2, "x = 1\n"), (8, "y = x\n")]


WITH_EXAMPLES = [d for d in sorted(DOCS.glob("*.md")) if python_blocks(d.read_text("utf-8"))]


def test_the_guides_have_examples() -> None:
    names = {d.name for d in WITH_EXAMPLES}
    assert {"codec.md", "appliance.md", "emulator.md", "inspection.md"} <= names


@pytest.mark.parametrize("doc", WITH_EXAMPLES, ids=lambda path: path.name)
def test_doc_examples_run(
    doc: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    blocks = python_blocks(doc.read_text(encoding="utf-8"))
    # The emulator's example builds network namespaces: it needs root, as CI has.
    if any("Emulator(" in code for _line, code in blocks) and os.geteuid() != 0:
        pytest.skip(f"{doc.name}'s examples build network namespaces, which needs root")
    monkeypatch.chdir(tmp_path)  # whatever an example writes lands in a scratch directory
    namespace: dict[str, object] = {"__name__": f"docs.{doc.stem}"}
    for line, code in blocks:
        try:
            exec(compile(code, f"{doc.name}:{line}", "exec"), namespace)
        except Exception as err:
            pytest.fail(f"{doc.name}, block at line {line}: {type(err).__name__}: {err}")


def test_the_readme_modifier_runs_on_udp_and_tcp() -> None:
    # The README's first example must work on what it names, TCP included.
    from scapy.layers.inet import IP, TCP, UDP

    import geneve

    (_line, code), *_ = python_blocks((DOCS.parent / "README.md").read_text("utf-8"))
    namespace: dict[str, object] = {}
    exec(compile(code, "README.md", "exec"), namespace)
    modifier = namespace["modifier"]
    text = b"see http://example.com/"
    for l4 in (UDP(sport=5, dport=3000), TCP(sport=5, dport=80, flags="PA")):
        inner = bytes(IP(src="10.0.0.1", dst="10.0.0.2") / l4 / text)
        # With flows, as the daemon runs it: on TCP too the payload grows.
        pipeline = geneve.Pipeline(modifier, flows=True)  # type: ignore[arg-type]
        frame = geneve.build_frame(inner)
        (out,) = pipeline.handle(frame, len(frame), 1.0)
        assert pipeline.stats.modifier_errors == 0
        assert bytes(out).endswith(b"see https://example.com/")
        blocked = geneve.build_frame(bytes(IP() / l4 / b"forbidden"))
        assert pipeline.handle(blocked, len(blocked), 1.0) == ()
    # Without flows a TCP length change is refused, a UDP one is not.
    stats = geneve.Stats()
    tcp = geneve.build_frame(bytes(IP() / TCP(sport=5, dport=80, flags="PA") / text))
    assert geneve.process(tcp, len(tcp), modifier, stats) is None  # type: ignore[arg-type]
    assert isinstance(stats.last_error, geneve.UnsupportedError)
