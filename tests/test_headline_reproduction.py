"""benchmarks/headline_reproduction.py: every benchmark is either compared or said not to be rerun, and its
rules judge hand-picked figures the way they say."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _script():
    if str(BENCHMARKS) not in sys.path:  # the script imports its sibling `common`
        sys.path.insert(0, str(BENCHMARKS))
    return importlib.import_module("headline_reproduction")


def test_every_benchmark_is_compared_or_has_a_reason():
    script = _script()
    names = script.benchmarks()
    on_disk = {p.stem for p in BENCHMARKS.glob("*.py")} - {"common", "run_all", "headline_reproduction"}
    assert set(names) == on_disk
    assert set(script.COMPARE) <= set(script.RERUN) and not set(script.COMPARE) & set(script.NOT_RERUN)


@pytest.mark.parametrize("published, rerun, rule, within", [
    (62, 62, "exact", True), (62, 61, "exact", False), ("a, b", "a, c", "exact", False),
    (89.88, 89.5, "abs 0.5", True), (89.88, 89.3, "abs 0.5", False),
    (6e-7, 9e-6, "below 1e-5", True), (6e-7, 2e-5, "below 1e-5", False),
    (1.15, 0.4, "timing", None),
])
def test_rules_judge_as_documented(published, rerun, rule, within):
    row = _script().figure("f", published, rerun, rule)
    assert row["within"] is within
    if isinstance(published, float):
        assert row["difference"] == pytest.approx(rerun - published)


def test_a_published_file_compared_with_itself_reproduces():
    script = _script()
    for name, compare in script.COMPARE.items():
        data = json.loads((BENCHMARKS / "results" / f"{name}.json").read_text())
        assert all(row["within"] is not False for row in compare(data, data)), name
