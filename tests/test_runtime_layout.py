"""runtime/ by concept: a few files at its top and the rest in folders (onnx/, ort/, tensorrt/, cuda/,
measure/, tables/, check/, backends/), no file name in two of them, and the old flat import paths still
working as the very modules they became, with a DeprecationWarning."""

from __future__ import annotations

import collections
import importlib
import sys
import warnings
from pathlib import Path

import pytest

RUNTIME = Path(__file__).resolve().parents[1] / "runtime"


def test_the_top_of_runtime_holds_a_few_files_and_folders_by_concept():
    files = sorted(path.name for path in RUNTIME.glob("*.py"))
    folders = sorted(path.name for path in RUNTIME.iterdir() if (path / "__init__.py").is_file())
    assert len(files) <= 12, files
    assert {"onnx", "ort", "tensorrt", "cuda", "measure", "tables", "check", "backends"} <= set(folders)


def test_no_module_name_is_in_two_folders():
    names = collections.Counter(path.stem for path in RUNTIME.rglob("*.py") if path.stem != "__init__")
    assert [name for name, count in names.items() if count > 1] == []


@pytest.mark.parametrize(("old", "new"), [("onnx_export", "onnx.export"), ("cuda_graph", "cuda.graph"),
                                          ("layer_latency", "tables.table"), ("trtexec", "tensorrt.trtexec_command")])
def test_an_old_import_path_is_the_moved_module_with_a_warning(old, new):
    import prunefx.runtime  # noqa: F401  (installs the finder of moved modules)

    importlib.import_module(f"prunefx.runtime.{new}")
    sys.modules.pop(f"prunefx.runtime.{old}", None)  # another test may have imported the old path already
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = importlib.import_module(f"prunefx.runtime.{old}")
    assert module is importlib.import_module(f"prunefx.runtime.{new}")
    assert module.__spec__.name == f"prunefx.runtime.{new}"  # the moved module keeps its own spec
    assert any(issubclass(w.category, DeprecationWarning) and new in str(w.message) for w in caught)
