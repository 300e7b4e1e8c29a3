"""The tensor math of N:M sparsity (graph/sparsity/nm_masks.py): grouping along input channels per kernel tap,
magnitude masks, SparseGPT-style OBS against a reference loop, CAP's Sherman-Morrison Fisher inverse
and one-at-a-time elimination, and the global loss threshold of unstructured CAP."""

import pytest
import torch

from prunefx.graph import PrunefxError
from prunefx.graph.sparsity.nm_masks import (
    FisherInverse,
    Pattern,
    blocks_of,
    cap_eliminate,
    global_counts,
    grouped_hessian,
    grouped_matrix,
    magnitude_mask,
    nm_counts,
    obs_prune,
    pattern_violations,
    relative_output_error,
    unfold_to_grouped,
    weight_from_grouped,
)

TWO_FOUR = Pattern(2, 4)


def _obeys_two_four(matrix) -> bool:
    """[outputs, inputs, *taps]: every 4 consecutive inputs of every output and tap hold <= 2 non-zeros."""
    moved = matrix.movedim(1, -1)
    groups = moved.reshape(*moved.shape[:-1], matrix.shape[1] // 4, 4)
    return bool(((groups != 0).sum(-1) <= 2).all())


def test_groups_run_along_input_channels_per_kernel_tap():
    weight = torch.randn(8, 8, 3, 3)
    assert torch.equal(weight_from_grouped(grouped_matrix(weight), weight.shape), weight)
    flat_two_four = weight.clone().reshape(8, -1)  # 2:4 along the flattened C*R*S axis: wrong for TensorRT
    flat_two_four *= magnitude_mask(flat_two_four, TWO_FOUR)
    assert pattern_violations(flat_two_four.reshape(weight.shape), TWO_FOUR) > 0
    matrix = grouped_matrix(weight)
    masked = weight_from_grouped(matrix * magnitude_mask(matrix, TWO_FOUR), weight.shape)
    assert pattern_violations(masked, TWO_FOUR) == 0 and _obeys_two_four(masked)
    kept = masked[2, 4:8, 1, 2]  # one output, one tap, one group of 4 input channels
    assert set(kept.abs().topk(2).values.tolist()) == set(weight[2, 4:8, 1, 2].abs().topk(2).values.tolist())


def test_grouped_hessian_matches_the_grouped_weight_order():
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(4, 8, 3, 3, generator=generator, dtype=torch.float64)
    x = torch.randn(50, 8 * 9, generator=generator, dtype=torch.float64)  # unfolded: column c * 9 + tap
    perm = unfold_to_grouped(weight.shape)
    assert torch.allclose(x @ weight.reshape(4, -1).t(), x[:, perm] @ grouped_matrix(weight).t())
    assert torch.allclose(grouped_hessian(x.t() @ x, weight.shape), x[:, perm].t() @ x[:, perm])


def test_sherman_morrison_inverse_equals_the_direct_inverse():
    generator = torch.Generator().manual_seed(0)
    gradients = torch.randn(30, 20, generator=generator, dtype=torch.float64)  # 30 samples of a 20-weight layer
    fisher = FisherInverse(20, 8, samples=30, damping=0.5)
    fisher.add(gradients[:11])
    fisher.add(gradients[11:])
    blocks = torch.cat([gradients, torch.zeros(30, 4, dtype=torch.float64)], 1).reshape(30, 3, 8)
    for b in range(3):
        direct = torch.linalg.inv(0.5 * torch.eye(8, dtype=torch.float64) + blocks[:, b].t() @ blocks[:, b] / 30)
        assert torch.allclose(fisher.inverse[b], direct, atol=1e-10)


def test_cap_without_correlations_is_magnitude_and_respects_n_of_m():
    weights = torch.randn(2, 16, dtype=torch.float64)
    valid = torch.ones_like(weights, dtype=torch.bool)
    inverse = torch.eye(16, dtype=torch.float64).expand(2, 16, 16).clone()
    updated, removed, losses = cap_eliminate(weights, inverse, valid, nm_counts(valid, TWO_FOUR), TWO_FOUR)
    assert torch.equal(~removed, magnitude_mask(weights, TWO_FOUR))
    assert torch.equal(updated, weights * ~removed)  # a diagonal Fisher updates nothing
    assert torch.allclose(losses[:, -1], (weights ** 2 * removed).sum(1) / 2)


def test_cap_update_is_the_obs_step_and_lowers_the_loss():
    generator = torch.Generator().manual_seed(1)
    gradients = torch.randn(64, 8, generator=generator, dtype=torch.float64) @ torch.randn(8, 8, generator=generator,
                                                                                            dtype=torch.float64)
    fisher = FisherInverse(8, 8, samples=64, damping=1e-3)
    fisher.add(gradients)
    weights = torch.randn(1, 8, generator=generator, dtype=torch.float64)
    valid = torch.ones_like(weights, dtype=torch.bool)
    updated, removed, losses = cap_eliminate(weights, fisher.inverse, valid, nm_counts(valid, TWO_FOUR), TWO_FOUR)
    assert pattern_violations(updated, TWO_FOUR) == 0 and int(removed.sum()) == 4
    curvature = torch.linalg.inv(fisher.inverse[0])
    change = (updated - weights)[0]
    quadratic_loss = float(change @ curvature @ change) / 2
    assert losses[0, -1] == pytest.approx(quadratic_loss, rel=1e-6)  # sum rho / 2 is the model's loss increase
    masked = (weights * ~removed - weights)[0]
    assert quadratic_loss < float(masked @ curvature @ masked) / 2  # the update beats masking alone


def test_obs_with_an_identity_hessian_is_magnitude_and_beats_it_on_correlated_inputs():
    generator = torch.Generator().manual_seed(2)
    matrix = torch.randn(6, 32, generator=generator, dtype=torch.float64)
    updated, keep = obs_prune(matrix, torch.eye(32, dtype=torch.float64), TWO_FOUR, damping=0.0)
    assert torch.equal(keep, magnitude_mask(matrix, TWO_FOUR)) and torch.allclose(updated, matrix * keep)
    # activations are correlated: a few directions carry most of the energy
    factors = torch.randn(500, 8, generator=generator, dtype=torch.float64)
    x = factors @ torch.randn(8, 32, generator=generator, dtype=torch.float64)
    x += 0.1 * torch.randn(500, 32, generator=generator, dtype=torch.float64)
    hessian = x.t() @ x
    updated, keep = obs_prune(matrix, hessian, TWO_FOUR, damping=0.01)
    assert pattern_violations(updated, TWO_FOUR) == 0
    magnitude = matrix * magnitude_mask(matrix, TWO_FOUR)
    assert relative_output_error(matrix, updated, hessian) < 0.5 * relative_output_error(matrix, magnitude, hessian)


def _sparsegpt_reference(matrix, hessian, damping):
    """SparseGPT's 2:4 loop as published, without lazy column blocks."""
    w = matrix.clone()
    damped = hessian + damping * hessian.diagonal().mean() * torch.eye(hessian.shape[0], dtype=hessian.dtype)
    factor = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(damped)), upper=True)
    mask = torch.zeros_like(w, dtype=torch.bool)
    for i in range(w.shape[1]):
        if i % 4 == 0:
            saliency = w[:, i:i + 4] ** 2 / factor.diagonal()[i:i + 4] ** 2
            mask.scatter_(1, i + saliency.topk(2, dim=1, largest=False).indices, True)
        error = torch.where(mask[:, i], w[:, i], torch.zeros_like(w[:, i])) / factor[i, i]
        w[:, i:] -= error[:, None] * factor[i, i:][None, :]
    return w


def test_obs_matches_the_sparsegpt_reference_across_column_blocks():
    generator = torch.Generator().manual_seed(3)
    matrix = torch.randn(5, 300, generator=generator, dtype=torch.float64)  # 300 columns: three lazy blocks
    x = torch.randn(1000, 300, generator=generator, dtype=torch.float64) @ torch.randn(300, 300, generator=generator,
                                                                                      dtype=torch.float64)
    updated, _ = obs_prune(matrix, x.t() @ x, TWO_FOUR, damping=0.01)
    assert torch.allclose(updated, _sparsegpt_reference(matrix, x.t() @ x, 0.01), atol=1e-10)


def test_global_threshold_takes_the_cheapest_removals_across_blocks():
    curves = [torch.tensor([[1.0, 2.0, 9.0], [0.5, 0.6, 0.7]]), torch.tensor([[3.0, float("inf"), float("inf")]])]
    counts = global_counts(curves, 4 / 7)
    assert [c.tolist() for c in counts] == [[1, 3], [0]]
    blocks, valid = blocks_of(torch.arange(10.0), 4)
    assert blocks.shape == (3, 4) and int(valid.sum()) == 10


def test_patterns_parse_and_reject_nonsense():
    assert Pattern.parse("2:4") == TWO_FOUR and str(Pattern.parse("4:8")) == "4:8"
    for text in ("4:2", "0:4", "2:5", "two:four", "2"):
        with pytest.raises(PrunefxError):
            Pattern.parse(text)
