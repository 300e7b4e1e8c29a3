"""Lay out the package as it installs: a folder in which prunefx/graph, prunefx/passes and prunefx/runtime
exist (links to the top-level graph/, passes/ and runtime/ that setuptools maps there, package-dir).

Tools that read the package from the file system rather than import it cannot follow that mapping:
mkdocstrings' static analysis (scripts/docs_hooks.py) and import-linter (`make lint`) read this tree.

    .venv/bin/python scripts/package_tree.py build/import_tree   # then PYTHONPATH=build/import_tree
"""

from __future__ import annotations

import sys
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]
MAPPED = ("graph", "passes", "runtime")


def mirror_sources(folder: Path) -> Path:
    """Make (or bring up to date) FOLDER/prunefx as links into the repository; return FOLDER."""
    root = folder / "prunefx"
    root.mkdir(parents=True, exist_ok=True)
    targets = {entry.name: entry for entry in (REPOSITORY / "prunefx").iterdir() if entry.name != "__pycache__"}
    targets.update({name: REPOSITORY / name for name in MAPPED})
    for name, target in targets.items():
        link = root / name
        if link.is_symlink() and link.resolve() == target.resolve():
            continue
        if link.is_symlink() or link.is_file():
            link.unlink()
        link.symlink_to(target)
    for link in root.iterdir():  # entries removed from the package since the last run
        if link.is_symlink() and not link.exists():
            link.unlink()
    return folder


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: package_tree.py FOLDER")
    print(mirror_sources(Path(sys.argv[1])))
