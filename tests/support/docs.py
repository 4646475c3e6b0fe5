"""The runnable examples of the docs: each ```python block, as test_docs runs them.

A block fenced as ```python is a promise that it runs as written; one that only illustrates
(it needs root, a network or a running appliance) is fenced ```py instead and is not run.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

__all__ = ["DOCS", "definitions", "python_blocks"]

DOCS = Path(__file__).resolve().parents[2] / "docs"
# An opening fence of exactly "```python", its body, and the closing fence at the same indent.
BLOCK = re.compile(r"^([ \t]*)```python[ \t]*\n(.*?)^\1```[ \t]*$", re.MULTILINE | re.DOTALL)


def python_blocks(text: str) -> list[tuple[int, str]]:
    """(line number of the fence, dedented code) for each ```python block of ``text``."""
    blocks = []
    for match in BLOCK.finditer(text):
        indent = match.group(1)
        lines = match.group(2).splitlines()
        code = "\n".join(line[len(indent) :] if line.startswith(indent) else line for line in lines)
        blocks.append((text.count("\n", 0, match.start()) + 1, code + "\n"))
    return blocks


def definitions(doc: Path) -> str:
    """The imports, functions and classes of ``doc``'s examples, in order, as one module.

    What a rules module made of a doc's own code needs, without the examples' checks and
    side effects (which test_docs runs).
    """
    kept: list[ast.stmt] = []
    for _line, code in python_blocks(doc.read_text(encoding="utf-8")):
        for node in ast.parse(code).body:
            if isinstance(node, ast.Import | ast.ImportFrom | ast.FunctionDef | ast.ClassDef):
                kept.append(node)
    return ast.unparse(ast.Module(kept, type_ignores=[])) + "\n"
