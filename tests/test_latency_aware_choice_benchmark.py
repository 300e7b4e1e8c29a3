"""benchmarks/latency_aware_choice.py runs end to end in its --smoke mode (untrained models, tiny settings):
every row it promises is there, with the figures a row must have. Its figures mean nothing and are not checked."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _benchmark():
    if str(BENCHMARKS) not in sys.path:  # the benchmark imports its siblings `common` and `fashion_mnist_accuracy`
        sys.path.insert(0, str(BENCHMARKS))
    return importlib.import_module("latency_aware_choice")


@pytest.mark.slow
def test_the_smoke_run_writes_a_row_per_model_choice_and_speedup(tmp_path, monkeypatch):
    benchmark = _benchmark()
    exporters, export = [], benchmark.export_onnx
    monkeypatch.setattr(benchmark, "export_onnx", lambda *args, exporter, **kwargs: exporters.append(exporter)
                        or export(*args, exporter=exporter, **kwargs))
    assert benchmark.main(["--smoke", "--models", "resnet20", "--equal-macs", "resnet50", "--threads", "1",
                           "--results", str(tmp_path), "--cache-dir", str(tmp_path / "cache")]) == 0
    report = json.loads((tmp_path / "latency_aware_choice.json").read_text())
    assert report["smoke"] and [(r["choice"], r["goal"]) for r in report["accuracy"]] == [("macs", 1.2),
                                                                                          ("latency", 1.2)]
    for row in report["accuracy"]:
        assert row["speedup"] > 0 and 0 < row["macs_kept"] <= 1 and 0 <= row["test_accuracy"] <= 1
    assert [(r["model"], r["macs"], r["choice"]) for r in report["accuracy_at_macs"]] == [
        ("resnet20", 0.5, "macs"), ("resnet20", 0.5, "latency")]
    for row in report["accuracy_at_macs"]:
        assert row["speedup"] > 0 and 0 < row["macs_kept"] <= 1 and 0 <= row["test_accuracy"] <= 1
    assert [r["choice"] for r in report["equal_macs"]] == ["macs", "latency"]
    assert all(len(r["round_speedups"]) == 2 for r in report["equal_macs"])  # the smoke run's 2 rounds
    by_macs, by_time = report["equal_macs"]
    assert by_time["macs_kept"] == pytest.approx(by_macs["macs_kept"], rel=0.2)  # matched in MACs (loosely here)
    assert report["baselines"]["resnet20"]["table"]["measured"] > 0
    assert "Smoke run" in (tmp_path / "latency_aware_choice.md").read_text()
    # the searches time TorchScript files, as prunefx's do; the published equal-MACs rows the files it delivers
    assert set(exporters[:-3]) == {"torchscript"} and exporters[-3:] == ["dynamo"] * 3
    assert "At equal MACs (part 3)" in (tmp_path / "latency_aware_choice.md").read_text()


def test_equal_macs_choices_are_timed_round_by_round_against_the_dense_model(monkeypatch):
    """Both choices in every round, the order turned each round, through common.side_by_side; a slow spell in the
    middle (rounds 2 and 3 here, the dense model slowed 2x and the pruned ones 1.5x) reaches both, and each choice's
    figures are pooled over the rounds (numpy: the medians of all their runs), not its median round."""
    benchmark = _benchmark()
    import common

    timing = object.__new__(benchmark.Timing)
    timing.args = argparse.Namespace(runs=100, warmup=1, threads=2)
    timing.dense = "dense"
    calls = []

    def timing_round(make_a, make_b, warmup, runs, block, settle, clock, threads):
        calls.append(make_b())
        dense_slow, slow = (2.0, 1.5) if len(calls) in (3, 4, 5, 6) else (1.0, 1.0)
        ms = {"macs": 10.0, "latency": 8.0}[calls[-1]] * slow
        assert (make_a(), runs, warmup, threads) == ("dense", 25, 1, 2)
        return [[20e-3 * dense_slow] * 5] * 5, [[ms * 1e-3] * 5] * 5, threads, threads

    monkeypatch.setattr(common, "timing_round", timing_round)
    timing._runner = lambda program: program
    timed = timing.side_by_side({"macs": "macs", "latency": "latency"}, rounds=4)
    assert calls == ["macs", "latency", "latency", "macs", "macs", "latency", "latency", "macs"]
    for choice, ms in (("macs", 10.0), ("latency", 8.0)):
        dense, pruned = np.repeat([20.0, 40.0, 40.0, 20.0], 25), np.repeat([ms, 1.5 * ms, 1.5 * ms, ms], 25)
        result = timed[choice]
        assert result["round_speedups"] == pytest.approx([20 / ms, 40 / (1.5 * ms), 40 / (1.5 * ms), 20 / ms])
        assert result["speedup"] == pytest.approx(np.median(dense) / np.median(pruned))
        assert (result["dense_ms"], result["ms"]) == pytest.approx((np.median(dense), np.median(pruned)))
        assert result["speedup_low"] < result["speedup"] < result["speedup_high"] and "pruned_ms" not in result
    assert timed["macs"]["speedup"] == pytest.approx(2.4)  # the median of its rounds would be 2.33
