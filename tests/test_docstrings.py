"""Docstrings stay concise: none in the library reaches 20 lines. A module's docstring says what it is and why in
a few lines; algorithms, formulas and measured figures belong in docs/ (docs/algorithms.md, the guides and the
benchmark pages), with a one-line pointer in the code."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = ("graph", "passes", "runtime", "prunefx")
MAX_LINES = 19


def docstrings(path: Path, root: Path = ROOT):
    """(line count, where) of every module, class and function docstring in the file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) or not node.body:
            continue
        first = node.body[0]
        if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
            name = getattr(node, "name", "<module>")
            yield first.end_lineno - first.lineno + 1, f"{path.relative_to(root)}:{first.lineno} {name}"


def long_docstrings() -> list[str]:
    return [f"{where} ({lines} lines)" for folder in LIBRARY for path in sorted((ROOT / folder).rglob("*.py"))
            for lines, where in docstrings(path) if lines > MAX_LINES]


def test_no_docstring_of_20_lines_or_more():
    offenders = long_docstrings()
    assert not offenders, "docstrings of 20 lines or more (move the detail to docs/):\n" + "\n".join(offenders)


def test_a_long_docstring_is_found(tmp_path):
    module = tmp_path / "probe.py"
    module.write_text('"""' + "\n" * 20 + '"""\n\ndef f():\n    """One line."""\n')
    assert list(docstrings(module, tmp_path)) == [(21, "probe.py:1 <module>"), (1, "probe.py:24 f")]
