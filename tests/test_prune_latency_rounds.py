"""benchmarks/prune_latency.py times its variants round by round against the dense model: every round times every
variant, in an order that turns, so that a slow spell of the machine reaches all of them (before, one variant's
repeats ran back to back and a spell could catch one variant alone)."""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _benchmark():
    if str(BENCHMARKS) not in sys.path:  # the benchmark imports its sibling `common`
        sys.path.insert(0, str(BENCHMARKS))
    return importlib.import_module("prune_latency")


def test_every_round_times_every_variant_and_each_is_pooled_over_its_rounds(monkeypatch):
    """A slow spell over the second round slows the dense model and variant a alike; each variant's figures are the
    runtime's over its rounds (numpy: the medians of all their runs, and their ratio), not its median round."""
    benchmark = _benchmark()
    import common
    from scipy import stats

    calls = []
    dense_s = [0.020, 0.030, 0.020]  # per round
    pruned_s = {"a": [0.010, 0.012, 0.015], "b": [0.005, 0.006, 0.005]}

    def timing_round(make_a, make_b, warmup, runs, block, settle, clock, threads):
        pruned = make_b()
        calls.append(pruned)
        index = sum(call == pruned for call in calls) - 1
        assert (make_a(), block, settle, runs, threads) == ("dense", 10, 2, 10, 2)
        return [[dense_s[index]] * 5] * 2, [[pruned_s[pruned][index]] * 5] * 2, threads, threads

    monkeypatch.setattr(benchmark, "onnx_runner", lambda path, inputs, **options: str(path))
    monkeypatch.setattr(common, "timing_round", timing_round)
    args = argparse.Namespace(threads=2, warmup=1, runs=10, repeats=3)
    timed = benchmark.time_variants(Path("dense"), {"a": Path("a"), "b": Path("b")}, (), True, args)
    assert calls == ["a", "b", "b", "a", "a", "b"]
    for variant, seconds in pruned_s.items():
        each = np.array(dense_s) / np.array(seconds)
        pooled = np.median(np.repeat(dense_s, 10)) / np.median(np.repeat(seconds, 10))
        half = stats.t.ppf(0.95, 2) * np.std(np.log(each), ddof=1) / np.sqrt(3)
        result = timed[variant]
        assert result["speedup"] == pytest.approx(pooled) and result["speedups_of_repeats"] == pytest.approx(sorted(each))
        assert (result["speedup_low"], result["speedup_high"]) == pytest.approx((pooled / np.exp(half),
                                                                                  pooled * np.exp(half)))
        assert result["pruned"]["median_ms"] == pytest.approx(1e3 * np.median(seconds))
        assert result["pruned"]["runs"] == 30 and result["confidence"] == 0.9
    assert timed["a"]["speedup"] == pytest.approx(20 / 12)  # the median of its rounds (2, 2.5, 1.33) would be 2
