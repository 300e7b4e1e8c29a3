"""benchmarks/latency_aware_choice.py runs end to end in its --smoke mode (untrained models, tiny settings):
every row it promises is there, with the figures a row must have. Its figures mean nothing and are not checked."""

from __future__ import annotations

import argparse
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
    assert all(len(r["round_speedups"]) == 2 for r in report["equal_macs"])  # the smoke run's 2 rounds
    by_macs, by_time = report["equal_macs"]
    assert by_time["macs_kept"] == pytest.approx(by_macs["macs_kept"], rel=0.2)  # matched in MACs (loosely here)
    assert report["baselines"]["resnet20"]["table"]["measured"] > 0
    assert "Smoke run" in (tmp_path / "latency_aware_choice.md").read_text()


def test_equal_macs_choices_are_timed_round_by_round_against_the_dense_model():
    """Both choices in every round, the order turned each round; a slow spell in the middle (rounds 2 and 3 here)
    reaches both, and each choice's figure is its median over the rounds."""
    benchmark = _benchmark()
    timing = object.__new__(benchmark.Timing)
    timing.args = argparse.Namespace(runs=100)
    calls = []

    def against_dense(runner, runs):
        calls.append(runner)
        slow = 2.0 if len(calls) in (3, 4, 5, 6) else 1.0
        ms = {"macs": 10.0, "latency": 8.0}[runner] * slow
        return {"speedup": 20.0 * slow / ms, "dense_ms": 20.0 * slow, "ms": ms}

    timing._runner = lambda program: program
    timing._against_dense = against_dense
    timed = timing.side_by_side({"macs": "macs", "latency": "latency"}, rounds=4)
    assert calls == ["macs", "latency", "latency", "macs", "macs", "latency", "latency", "macs"]
    assert timed["macs"]["round_speedups"] == [2.0, 2.0, 2.0, 2.0] and timed["macs"]["speedup"] == 2.0
    assert timed["latency"]["speedup"] == 2.5 and timed["latency"]["dense_ms"] == 30.0
