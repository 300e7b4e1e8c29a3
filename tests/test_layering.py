"""The import contracts of pyproject.toml ([tool.importlinter]: layers prunefx -> runtime -> passes -> graph,
only the runtime lowers to ONNX/TensorRT, only the CLI imports the CLI) hold, checked by import-linter as
`make lint` runs it; and the contracts themselves break on a package that violates each of them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"
sys.path.insert(0, str(ROOT / "scripts"))
import package_tree  # noqa: E402  (scripts/ is not a package)

pytestmark = pytest.mark.skipif(not LINT_IMPORTS.is_file(), reason="import-linter is not installed (make setup)")


def _lint_imports(tree: Path) -> subprocess.CompletedProcess:
    # Run from the tree's folder: the repository root would put its own prunefx/ (without graph/) first.
    env = {**os.environ, "PYTHONPATH": str(tree), "NO_COLOR": "1", "COLUMNS": "200"}
    return subprocess.run([str(LINT_IMPORTS), "--no-cache", str(ROOT / "pyproject.toml")], cwd=tree, env=env,
                          capture_output=True, text=True, timeout=120)


def test_the_import_contracts_hold(tmp_path):
    result = _lint_imports(package_tree.mirror_sources(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr


def _fake_package(root: Path, modules: dict[str, str]) -> Path:
    """A package `prunefx` under root with the given modules (dotted name -> source), every folder a package."""
    for name, source in modules.items():
        path = root.joinpath(*name.split("."))
        for folder in [root.joinpath(*name.split(".")[:i]) for i in range(1, name.count(".") + 1)]:
            folder.mkdir(exist_ok=True)
            (folder / "__init__.py").touch()
        (path.with_suffix(".py")).write_text(source)
    return root


CLEAN = {"prunefx.__main__": "import prunefx.cli\n", "prunefx.cli": "import prunefx.cli.commands.prune\n",
         "prunefx.cli.commands.prune": "import prunefx.runtime.lower\n", "prunefx.cli.commands.bench": "import prunefx.errors\n",
         "prunefx.runtime.lower": "import onnx\nimport prunefx.passes.shrink\n",
         "prunefx.passes.shrink": "import prunefx.graph.program\n", "prunefx.graph.program": "import torch\n",
         "prunefx.errors": "", "prunefx.report": "import prunefx.runtime.lower\n"}

VIOLATIONS = {
    "the layers import downward only": {"prunefx.graph.program": "def f():\n    import prunefx.passes.shrink\n"},
    "never import the product layer": {"prunefx.passes.shrink": "import prunefx.errors\n"},
    "graph and passes import no ONNX": {"prunefx.graph.program": "import onnxruntime\n"},
    "Only the CLI imports the CLI": {"prunefx.report": "from prunefx.cli.commands import prune\n"},
    "do not import one another": {"prunefx.cli.commands.bench": "import prunefx.cli.commands.prune\n"},
}


def test_a_clean_fake_package_keeps_every_contract(tmp_path):
    result = _lint_imports(_fake_package(tmp_path, CLEAN))
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize("contract", VIOLATIONS)
def test_each_contract_breaks_on_its_violation(tmp_path, contract):
    result = _lint_imports(_fake_package(tmp_path, {**CLEAN, **VIOLATIONS[contract]}))
    assert result.returncode == 1
    broken = result.stdout.split("Broken contracts")[-1]
    # An upward import between the layers is also an import of prunefx.* that the second contract forbids.
    expected = 2 if contract == "the layers import downward only" else 1
    assert contract in broken and f" {expected} broken." in result.stdout, result.stdout


def test_no_module_imports_another_that_imports_it(tmp_path):
    """No import cycle anywhere, imports inside functions included (what `make lint` checks)."""
    import import_cycles

    assert import_cycles.cycles(package_tree.mirror_sources(tmp_path)) == []


def test_the_cycle_check_finds_a_cycle_through_an_import_inside_a_function(tmp_path):
    import import_cycles

    # a package of its own name: the prunefx this process imported would be found first
    _fake_package(tmp_path, {"cyclic.a": "from cyclic import b\n",
                             "cyclic.b": "def late():\n    from cyclic import a\n"})
    (cycle,) = import_cycles.cycles(tmp_path, "cyclic")
    assert any("cyclic.b -> cyclic.a (line 2)" in line for line in cycle)
