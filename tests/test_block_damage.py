"""UPDP's block damage (graph/depth/block_damage.py): the divergence of a linearised network's outputs from
the dense network's. The oracle: KL divergence computed by torch.nn.functional.kl_div."""

from __future__ import annotations

import pytest
import torch

from prunefx.graph.depth.block_damage import divergence


def test_logits_diverge_by_their_kl_divergence_and_never_below_zero():
    torch.manual_seed(0)
    dense, other = torch.randn(8, 10), torch.randn(8, 10)
    expected = torch.nn.functional.kl_div(torch.log_softmax(other.double(), 1), torch.log_softmax(dense.double(), 1),
                                          reduction="batchmean", log_target=True)
    # to rounding: float64 sums split over another number of threads differ in the last bit
    assert divergence(dense, other) == pytest.approx(float(expected), rel=1e-12) and float(expected) > 0
    # logits one float32 step apart in one place: their KL's rounding comes out below zero about a quarter
    # of the time; a damage is never negative
    for seed in range(20):
        logits = torch.randn(2, 10, generator=torch.Generator().manual_seed(seed))
        nudged = logits.clone()
        nudged[0, seed % 10] = torch.nextafter(nudged[0, seed % 10], torch.tensor(10.0))
        assert divergence(logits, nudged) >= 0.0
    assert divergence(dense, dense) == 0.0
