"""benchmarks/latency_aware_choice.py runs end to end in its --smoke mode (untrained models, tiny settings):
every row it promises is there, with the figures a row must have. Its figures mean nothing and are not checked."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _benchmark():
    if str(BENCHMARKS) not in sys.path:  # the benchmark imports its siblings `common` and `fashion_mnist_accuracy`
        sys.path.insert(0, str(BENCHMARKS))
    return importlib.import_module("latency_aware_choice")


@pytest.mark.slow
def test_the_smoke_run_writes_a_row_per_model_choice_and_speedup(tmp_path):
    benchmark = _benchmark()
    assert benchmark.main(["--smoke", "--models", "resnet20", "--equal-macs", "resnet50", "--threads", "1",
                           "--results", str(tmp_path), "--cache-dir", str(tmp_path / "cache")]) == 0
    report = json.loads((tmp_path / "latency_aware_choice.json").read_text())
    assert report["smoke"] and [(r["choice"], r["goal"]) for r in report["accuracy"]] == [("macs", 1.2),
                                                                                          ("latency", 1.2)]
    for row in report["accuracy"]:
        assert row["speedup"] > 0 and 0 < row["macs_kept"] <= 1 and 0 <= row["test_accuracy"] <= 1
    assert [r["choice"] for r in report["equal_macs"]] == ["macs", "latency"]
    by_macs, by_time = report["equal_macs"]
    assert by_time["macs_kept"] == pytest.approx(by_macs["macs_kept"], rel=0.2)  # matched in MACs (loosely here)
    assert report["baselines"]["resnet20"]["table"]["measured"] > 0
    assert "Smoke run" in (tmp_path / "latency_aware_choice.md").read_text()
