"""Activation ranges for INT8 quantizers (graph/int8/quantization.py), read from calibration data.

Calibration (`RangeObserver`) sees |x| over the calibration batches: the largest value (`max`), and a
histogram on [0, max] from which `percentile` (the given percentile of |x|), `mse` (the clipping range
whose quantization error, rounding and clipping together, is smallest over the histogram) and `entropy`
(the clipping range whose 128-level quantized histogram is closest to the clipped one in Kullback-Leibler
divergence, the criterion of TensorRT's entropy calibration) are read. Entropy leaves exact zeros out of
its histogram: they quantize to 0 under every scale, so they cannot inform the clip, and after a ReLU they
are half the tensor, a spike in bin 0 that only the narrowest bins of the tightest clip keep apart (with
them, entropy clips post-ReLU tensors far too tightly: docs/benchmarks/int8.md, 'Calibration methods').
"""

from __future__ import annotations

import numpy as np
import torch

from prunefx.graph.int8.quantization import LEVELS

HISTOGRAM_BINS = 2048


class RangeObserver:
    """|x| statistics of one activation over the calibration batches (see the module docstring). The
    histogram needs the range first, so callers make two passes: `observe_max`, then `observe_histogram`."""

    def __init__(self):
        self.max = 0.0
        self.histogram: np.ndarray | None = None
        self.zeros = 0.0  # how many of the values in the histogram's first bin are exactly 0

    def observe_max(self, x: torch.Tensor) -> float:
        """Returns this batch's max: NaN or inf where `x` holds one (torch's max keeps them; the running max,
        a Python max, would drop a NaN)."""
        batch_max = float(x.detach().abs().max())
        self.max = max(self.max, batch_max)
        return batch_max

    def observe_histogram(self, x: torch.Tensor, *, count_zeros: bool = True) -> None:
        """`count_zeros`: also count the exact zeros, which only the entropy method reads (a pass of its own)."""
        if self.max <= 0:
            return
        counts = torch.histc(x.detach().abs().float().flatten(), bins=HISTOGRAM_BINS, min=0.0, max=self.max)
        counts = counts.double().cpu().numpy()
        if count_zeros:
            self.zeros += float((x == 0).sum())
        self.histogram = counts if self.histogram is None else self.histogram + counts

    def amax(self, method: str, percentile: float = 99.99) -> float:
        if method == "max" or self.histogram is None or self.max <= 0:
            return self.max
        edges = np.linspace(0.0, self.max, HISTOGRAM_BINS + 1)
        if method == "percentile":
            cumulative = np.cumsum(self.histogram) / self.histogram.sum()
            # at 100 the last sum may round to just below 1: searchsorted would point past the last bin
            index = min(int(np.searchsorted(cumulative, percentile / 100.0)), HISTOGRAM_BINS - 1)
            return float(edges[1 + index].clip(max=self.max))
        if method == "entropy":
            return self._entropy_amax(edges)
        return self._mse_amax(edges)

    def _entropy_amax(self, edges: np.ndarray) -> float:
        """The clipping edge, among every 16th bin from the 128th, whose distribution quantized to 128 levels
        loses the least information (KL divergence) about the clipped distribution."""
        histogram = self.histogram.copy()
        histogram[0] -= self.zeros
        best, best_divergence = self.max, np.inf
        for stop in range(LEVELS + 1, HISTOGRAM_BINS + 1, 16):
            reference = histogram[:stop].copy()
            reference[-1] += histogram[stop:].sum()  # what lies beyond the clip saturates to the last level
            divergence = _kl(reference, _quantized_histogram(histogram[:stop], LEVELS + 1))
            if divergence < best_divergence:
                best, best_divergence = float(edges[stop]), divergence
        return best

    def _mse_amax(self, edges: np.ndarray) -> float:
        """The clipping value, among 128 candidates up to the max, with the least squared error."""
        centres = (edges[:-1] + edges[1:]) / 2
        best, best_error = self.max, np.inf
        for clip in np.linspace(self.max / 128, self.max, 128):
            scale = clip / LEVELS
            quantized = np.minimum(np.round(centres / scale), LEVELS) * scale
            error = float(np.sum(self.histogram * (centres - quantized) ** 2))
            if error < best_error:
                best, best_error = float(clip), error
        return best


def _quantized_histogram(histogram: np.ndarray, levels: int) -> np.ndarray:
    """`histogram` merged into `levels` groups of bins, each group's count spread back evenly over the bins of
    the group that were not empty: the distribution the quantized tensor can still tell apart."""
    sizes = np.full(levels, histogram.size // levels)
    sizes[:histogram.size % levels] += 1  # as np.array_split groups them
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    nonzero = histogram > 0
    totals = np.add.reduceat(histogram, starts)
    counts = np.add.reduceat(nonzero.astype(np.float64), starts)
    per_bin = np.repeat(np.divide(totals, counts, out=np.zeros_like(totals), where=counts > 0), sizes)
    return np.where(nonzero, per_bin, 0.0)


def _kl(reference: np.ndarray, candidate: np.ndarray) -> float:
    p, q = reference / reference.sum(), candidate / max(candidate.sum(), 1e-30)
    mask = p > 0
    return float(np.sum(p[mask] * np.log(p[mask] / np.maximum(q[mask], 1e-30))))
