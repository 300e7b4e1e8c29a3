"""benchmarks/prune_profile.py's tables: a pruned model's kernel time split into products (what a MAC count counts)
and the other operators, checked on a profile whose figures are worked out by hand."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _prune_profile():
    if str(BENCHMARKS) not in sys.path:  # the benchmarks import their siblings
        sys.path.insert(0, str(BENCHMARKS))
    return importlib.import_module("prune_profile")


ENTRY = {"macs_reduction": 2.0,
         "kernel_ms_per_run": {"dense": {"Conv": 8.0, "Add": 2.0, "FusedMatMul": 2.0},
                               "pruned": {"Conv": 4.0, "Add": 2.0, "FusedMatMul": 1.0, "Transpose": 0.5}}}


def test_the_summary_splits_products_from_the_other_operators():
    # dense 12 ms, pruned 7.5: 1.60x for 2x fewer MACs (0.80); products 10 -> 5 (2.00x); others 2 -> 2.5 (0.80x),
    # a sixth of the dense time and a third of the pruned
    row = _prune_profile().summary_row("m", ENTRY)
    assert row == ["m", "2.00x", "12.00", "7.50", "**1.60x** (0.80)", "2.00x", "0.80x", "17 % -> 33 %"]


def test_each_operator_says_its_share_of_the_time_saved():
    rows = _prune_profile().operator_rows(ENTRY)  # 4.5 ms saved: Conv 4, FusedMatMul 1, Transpose -0.5
    assert rows == [["Conv", "8.000", "4.000", "2.00x", "89 %"], ["Add", "2.000", "2.000", "1.00x", "0 %"],
                    ["FusedMatMul", "2.000", "1.000", "2.00x", "22 %"], ["Transpose", "0.000", "0.500", "0.00x", "-11 %"]]
