"""Layers import downward only: prunefx -> runtime -> passes -> graph (DESIGN.md). Checked by parsing
every module's imports (a linter cannot see through the package-dir mapping that installs graph/ as
prunefx.graph), including imports inside functions."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAYERS = {"graph": 0, "passes": 1, "runtime": 2, "prunefx": 3}


def _imported_layers(path: Path) -> set[tuple[str, int]]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else \
            [node.module or ""] if isinstance(node, ast.ImportFrom) else []
        for name in names:
            parts = name.split(".")
            if parts[0] == "prunefx":
                layer = parts[1] if len(parts) > 1 and parts[1] in LAYERS else "prunefx"
                found.add((layer, node.lineno))
    return found


def _modules(folder: Path) -> list[Path]:
    """Every module under `folder`, subpackages included (a future graph/channels/ must not escape)."""
    return sorted(path for path in folder.rglob("*.py") if "__pycache__" not in path.parts)


@pytest.mark.parametrize("folder", ["graph", "passes", "runtime"])
def test_layers_import_only_downward(folder):
    files = _modules(ROOT / folder)
    assert files
    upward = [f"{path.relative_to(ROOT)}:{line} imports prunefx.{layer}"
              for path in files for layer, line in _imported_layers(path)
              if LAYERS[layer] > LAYERS[folder]]
    assert not upward, upward


@pytest.mark.parametrize("folder", ["graph", "passes"])
def test_only_the_runtime_imports_onnx_and_tensorrt(folder):
    lowering = {"onnx", "onnxruntime", "onnx_graphsurgeon", "onnxscript", "tensorrt"}
    found = [f"{path.relative_to(ROOT)} imports {name}" for path in _modules(ROOT / folder)
             for name in _top_level_imports(path) if name in lowering]
    assert not found, found


def _top_level_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    return {name.split(".")[0] for node in ast.walk(tree)
            for name in ([alias.name for alias in node.names] if isinstance(node, ast.Import) else
                         [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])}


def test_the_walk_reaches_subpackages(tmp_path):
    (tmp_path / "channels").mkdir()
    (tmp_path / "channels" / "rules.py").write_text("import onnx\n")
    assert _modules(tmp_path) == [tmp_path / "channels" / "rules.py"]
    assert _top_level_imports(tmp_path / "channels" / "rules.py") == {"onnx"}


def test_the_check_sees_an_upward_import(tmp_path):
    module = tmp_path / "bad.py"
    module.write_text("def f():\n    from prunefx.runtime import export_onnx\n    import prunefx.passes.distill\n")
    assert _imported_layers(module) == {("runtime", 2), ("passes", 3)}
