"""benchmarks/prune_latency.py times its variants round by round against the dense model: every round times every
variant, in an order that turns, so that a slow spell of the machine reaches all of them (before, one variant's
repeats ran back to back and a spell could catch one variant alone)."""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path
from types import SimpleNamespace

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _benchmark():
    if str(BENCHMARKS) not in sys.path:  # the benchmark imports its sibling `common`
        sys.path.insert(0, str(BENCHMARKS))
    return importlib.import_module("prune_latency")


def test_every_round_times_every_variant_and_each_keeps_its_median_round(monkeypatch):
    benchmark = _benchmark()
    calls = []

    def compare(dense, pruned, **settings):
        calls.append(pruned)
        slow = 1.5 if len(calls) in (3, 4) else 1.0  # a slow spell over the second round
        pruned_ms = {"a": 10.0, "b": 5.0}[pruned] * slow
        stats = SimpleNamespace(median_ms=pruned_ms, min_ms=pruned_ms)
        return SimpleNamespace(speedup=20.0 / pruned_ms, a=SimpleNamespace(median_ms=20.0, min_ms=20.0), b=stats)

    monkeypatch.setattr(benchmark, "onnx_runner", lambda path, inputs, **options: str(path))
    monkeypatch.setattr(benchmark, "compare_latency", compare)
    monkeypatch.setattr(benchmark, "_stats", lambda stats: stats.median_ms)
    args = argparse.Namespace(threads=2, warmup=1, runs=10, repeats=3)
    timed = benchmark.time_variants(Path("dense"), {"a": Path("a"), "b": Path("b")}, (), True, args)
    assert calls == ["a", "b", "b", "a", "a", "b"]
    assert timed["a"]["speedups_of_repeats"] == [20 / 15, 2.0, 2.0] and timed["a"]["speedup"] == 2.0
    assert timed["b"]["speedup"] == 4.0 and timed["b"]["pruned"] == 5.0
