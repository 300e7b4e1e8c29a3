"""Second-order compensation from the kept calibration rows (Woodbury, H never formed) gives the update and
the errors that the path through H gives, and both solve the ridge problem an independent numpy solve
does; the Hessian cache filled from rows still hands H to a caller that needs it."""

import numpy as np
import pytest
import torch

from prunefx.graph.channels.compensation import lean_damped_inverse, second_order_update
from prunefx.graph.layer_hessians import LayerRows


def _layer(rows: int = 40, columns: int = 120, outputs: int = 9):
    rng = np.random.default_rng(rows)
    x = np.maximum(rng.standard_normal((rows, columns)), 0.0) + 0.2 * rng.standard_normal((rows, 1))
    matrix = rng.standard_normal((outputs, columns))
    removed = np.zeros(columns, dtype=bool)
    removed[rng.choice(columns, columns // 3, replace=False)] = True
    return torch.from_numpy(x), torch.from_numpy(matrix), removed


@pytest.mark.parametrize("damping", [0.01, 0.3])
def test_the_update_from_rows_equals_the_update_through_the_hessian_and_the_ridge_solution(damping):
    x, matrix, removed = _layer()
    from_rows, errors_rows = second_order_update(matrix, None, removed, damping, rows=LayerRows(40, x))
    through_h, errors_h = second_order_update(matrix, x.t() @ x, removed, damping)
    torch.testing.assert_close(from_rows, through_h, rtol=1e-8, atol=1e-10)
    for key in ("error_without", "error_with"):
        assert errors_rows[key] == pytest.approx(errors_h[key], rel=1e-8, abs=1e-12)
    # oracle: min ||X_K D^T - X_R M_R^T||^2 + lam ||D||^2 by numpy's solve of the normal equations
    h = x.numpy().T @ x.numpy()
    lam = damping * np.trace(h) / h.shape[0]
    keep = ~removed
    rhs = h[np.ix_(keep, removed)] @ matrix.numpy()[:, removed].T
    delta = np.linalg.solve(h[np.ix_(keep, keep)] + lam * np.eye(keep.sum()), rhs)
    np.testing.assert_allclose(from_rows.numpy()[:, keep], matrix.numpy()[:, keep] + delta.T, rtol=1e-8, atol=1e-10)
    np.testing.assert_array_equal(from_rows.numpy()[:, removed], matrix.numpy()[:, removed])
    assert errors_rows["error_with"] < errors_rows["error_without"]


def test_without_damping_the_rows_path_forms_the_hessian():
    x, matrix, removed = _layer(rows=200, columns=60)  # full column rank: solvable without damping
    from_rows, _ = second_order_update(matrix, None, removed, 0.0, rows=LayerRows(200, x))
    through_h, _ = second_order_update(matrix, x.t() @ x, removed, 0.0)
    torch.testing.assert_close(from_rows, through_h, rtol=1e-8, atol=1e-10)
    inverse = lean_damped_inverse(None, 0.0, LayerRows(200, x))
    torch.testing.assert_close(inverse, torch.linalg.inv(x.t() @ x), rtol=1e-6, atol=1e-9)


def test_a_cache_filled_from_rows_hands_the_hessian_to_a_caller_that_needs_it():
    from torch import nn

    from prunefx.graph import capture
    from prunefx.graph.channels.groups import find_channel_groups
    from prunefx.graph.layer_hessians import iter_hessians
    from prunefx.graph.layer_inputs import find_consumers

    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 8, 3, padding=1)).eval()
    program = capture(model, (torch.randn(1, 3, 4, 4),))
    combing = find_channel_groups(program.module)
    consumers, _ = find_consumers(program.module, combing.analysis, {int(combing.groups[0].classes[0])})
    spec = consumers[0].spec  # 144 columns, 16 rows per image: kept
    batches = [(torch.randn(1, 3, 4, 4),) for _ in range(3)]
    cache: dict = {}
    [(_, hessian, rows)] = iter_hessians(program.module, [spec], batches, cache=cache, from_rows=True)
    assert hessian is None and rows.count == 48 and rows.kept.shape == (48, 144)
    [(_, hessian, again)] = iter_hessians(program.module, [spec], batches, cache=cache)
    assert again is rows
    [(_, expected, _)] = iter_hessians(program.module, [spec], batches)  # gathered afresh, from the data
    torch.testing.assert_close(hessian, expected, rtol=1e-12, atol=1e-9)


def test_undamped_compensation_from_few_rows_is_the_minimum_norm_least_squares_update():
    """Damping 0 with fewer rows than columns: H_KK is singular. Both paths give the minimum-norm solution of
    min ||X_K D^T - X_R M_R^T||^2 (oracle: numpy's SVD-based lstsq on X_K itself), not NaN, on any device's
    solver (the pseudo-inverse, not a full-rank least-squares driver)."""
    x, matrix, removed = _layer(rows=10, columns=40)
    from_rows, errors_rows = second_order_update(matrix, None, removed, 0.0, rows=LayerRows(10, x))
    through_h, errors_h = second_order_update(matrix, x.t() @ x, removed, 0.0)
    x_k, x_r = x.numpy()[:, ~removed], x.numpy()[:, removed]
    delta = np.linalg.lstsq(x_k, x_r @ matrix.numpy()[:, removed].T, rcond=None)[0]
    expected = matrix.numpy().copy()
    expected[:, ~removed] += delta.T
    for updated in (from_rows, through_h):
        np.testing.assert_allclose(updated.numpy()[:, ~removed], expected[:, ~removed], rtol=1e-6, atol=1e-8)
    assert errors_rows["error_with"] == pytest.approx(0.0, abs=1e-12) == errors_h["error_with"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU with CUDA")
def test_undamped_compensation_on_a_gpu_is_the_cpus_minimum_norm_update():
    """On a GPU, torch's least squares assumes full rank: the singular undamped solve must still give the CPU's
    finite, minimum-norm update."""
    x, matrix, removed = _layer(rows=10, columns=40)
    on_cpu, _ = second_order_update(matrix, x.t() @ x, removed, 0.0)
    on_gpu, _ = second_order_update(matrix.cuda(), (x.t() @ x).cuda(), removed, 0.0)
    assert torch.isfinite(on_gpu).all()
    torch.testing.assert_close(on_gpu.cpu(), on_cpu, rtol=1e-6, atol=1e-8)
