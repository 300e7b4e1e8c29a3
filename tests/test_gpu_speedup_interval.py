"""The interval of a GPU speed-up (runtime/measure/gpu_latency.compare_gpu_latency) against stand-in runners whose
times drift (each sample leans on the one before, as a GPU's clocks and temperature make it), with a known true
ratio of 1: the oracle is how often the interval misses it, over many simulated comparisons."""

from __future__ import annotations

import numpy as np
import pytest

from prunefx.runtime.measure.gpu_latency import BLOCK, compare_gpu_latency


class DriftingRunner:
    """Milliseconds exp(x), x an AR(1) walk: x' = rho x + noise."""

    def __init__(self, rng: np.random.Generator, rho: float = 0.8, sd: float = 0.05):
        self.rng, self.rho, self.sd, self.x = rng, rho, sd, 0.0

    def __call__(self) -> float:
        self.x = self.rho * self.x + self.rng.normal(0.0, self.sd)
        return float(np.exp(self.x))


def test_the_interval_of_drifting_samples_misses_the_true_ratio_about_as_often_as_it_claims():
    rng = np.random.default_rng(0)
    comparisons = [compare_gpu_latency(DriftingRunner(rng), DriftingRunner(rng), warmup=0, runs=200)
                   for _ in range(200)]
    missed = sum(not (c.speedup_low <= 1.0 <= c.speedup_high) for c in comparisons) / len(comparisons)
    # claimed 10 %; single pairs of samples as units missed 60 % of these (pairs are not independent)
    assert missed < 0.25
    assert {c.method for c in comparisons} == {"t over pairs of blocks"}


def test_the_speed_up_is_the_ratio_of_the_pooled_medians_and_a_zero_one_no_infinity():
    comparison = compare_gpu_latency(lambda: 2.0, lambda: 1.0, warmup=0, runs=40)
    assert comparison.speedup == pytest.approx(2.0)
    assert comparison.speedup_low == pytest.approx(2.0) and comparison.speedup_high == pytest.approx(2.0)
    zero = compare_gpu_latency(lambda: 0.0, lambda: 0.0, warmup=0, runs=2 * BLOCK)
    assert zero.speedup == 1.0 and zero.speedup_low is None  # 0 / 0: no speed-up, and no interval to judge
