"""Import cycles among prunefx's modules, imports inside functions included (`make lint` fails on any).

    python scripts/import_cycles.py TREE    # TREE: the package laid out as it installs (scripts/package_tree.py)

import-linter's layers stop an upward import between layers; within a layer, two modules that import each
other (at the top or inside a function, to dodge the import-time error) are one concept split in two or a
helper in the wrong place. grimp (import-linter's graph) sees every import statement; only those under
`if TYPE_CHECKING:` are left out, as they never run. Prints each cycle with the lines that make it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def cycles(tree: Path, package: str = "prunefx") -> list[list[str]]:
    """Each strongly connected group of two or more modules, as 'importer -> imported (lines)' lines."""
    import grimp
    import networkx

    sys.path.insert(0, str(tree))
    try:
        graph = grimp.build_graph(package, exclude_type_checking_imports=True, cache_dir=None)
    finally:
        sys.path.remove(str(tree))
    edges = networkx.DiGraph((module, imported) for module in graph.modules
                             for imported in graph.find_modules_directly_imported_by(module))
    found = []
    for group in networkx.strongly_connected_components(edges):
        if len(group) > 1:
            found.append([f"{a} -> {b} (line {', '.join(str(d['line_number']) for d in graph.get_import_details(importer=a, imported=b))})"
                          for a, b in sorted(edges.subgraph(group).edges())])
    return found


def main(argv: list[str]) -> int:
    tree = Path(argv[0]).resolve()
    os.chdir(tree)  # the checkout's own prunefx/ (without graph/, passes/, runtime/) must not be found first
    found = cycles(tree)
    for number, lines in enumerate(found, 1):
        print(f"import cycle {number}:\n  " + "\n  ".join(lines))
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
