"""tests/slow_tests.txt (the tests `make test-fast` leaves out) and tests/zoo_lane.txt (those `make test` leaves
to `make test-zoo`) name tests that exist: a renamed test would otherwise fall back into the other lane
unnoticed, and a stale line would hide nothing."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


def _entries(name: str = "slow_tests.txt") -> list[str]:
    lines = (TESTS / name).read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def _test_functions(module: Path) -> set[str]:
    tree = ast.parse(module.read_text())
    return {node.name for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))}


@pytest.mark.parametrize("listing", ["slow_tests.txt", "zoo_lane.txt"])
def test_every_listed_test_exists(listing):
    missing = []
    for entry in _entries(listing):
        path, _, name = entry.partition("::")
        module = ROOT / path
        if not module.is_file():
            missing.append(entry)
        elif name and name.split("[")[0].split("::")[-1] not in _test_functions(module):
            missing.append(entry)
    assert _entries(listing) and not missing, f"stale entries in tests/{listing}: {missing}"
