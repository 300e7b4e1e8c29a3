"""Run this environment's Python on another checkout's prunefx sources: every process, subprocesses too.

The .venv installs prunefx in editable mode, and its import hook maps `prunefx`, `prunefx.graph`,
`prunefx.passes` and `prunefx.runtime` to this checkout's folders. Putting a worktree of an older commit on
PYTHONPATH is therefore not enough: `prunefx` would come from the worktree, but `prunefx.graph`,
`prunefx.passes` and `prunefx.runtime` would still come from this checkout, which gives a mix of the two
commits. Python imports `sitecustomize` after the .pth files have installed that hook, so this module
points the hook at the worktree named by $PRUNEFX_SOURCES instead, following the worktree's own
pyproject.toml (its `[tool.setuptools.package-dir]`, or plain `prunefx/` where it has none):

    git worktree add /tmp/at-08bf9aa 08bf9aa
    cd /tmp/at-08bf9aa && PYTHONPATH=/path/to/scripts/at_commit PRUNEFX_SOURCES=/tmp/at-08bf9aa \\
        /path/to/.venv/bin/python benchmarks/int8_attention.py ...

Python refuses to start if PRUNEFX_SOURCES is not a checkout or a prunefx package it maps would still load
from elsewhere.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

import tomllib


def package_folders(sources: Path) -> dict[str, str]:
    """Package name -> folder in `sources`, as its pyproject.toml lays the packages out."""
    if not (sources / "pyproject.toml").is_file():
        sys.exit(f"at_commit: PRUNEFX_SOURCES={sources} is not a prunefx checkout (no pyproject.toml)")
    pyproject = tomllib.loads((sources / "pyproject.toml").read_text())
    folders = pyproject.get("tool", {}).get("setuptools", {}).get("package-dir", {}) or {"prunefx": "prunefx"}
    return {package: str(sources / folder) for package, folder in folders.items()}


def point_hooks_at(sources: Path) -> None:
    folders = package_folders(sources)
    hooks = [module for name, module in sys.modules.items()
             if name.startswith("__editable__") and name.endswith("_finder") and hasattr(module, "MAPPING")]
    for hook in hooks:
        hook.MAPPING.clear()
        hook.MAPPING.update(folders)
    for package, folder in folders.items():  # imported through the hook, now pointed at `sources`
        loaded = Path(importlib.import_module(package).__file__).resolve()
        if not loaded.is_relative_to(Path(folder).resolve()):
            sys.exit(f"at_commit: {package} loads from {loaded}, not from {folder}")


if os.environ.get("PRUNEFX_SOURCES"):
    point_hooks_at(Path(os.environ["PRUNEFX_SOURCES"]).resolve())
