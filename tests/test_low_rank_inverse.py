"""The Woodbury path of the damped inverse (graph/numerics/low_rank_inverse.py): from the kept calibration
rows, equal to numpy's inverse of H + lam I, including a rank below the row count; not taken where it
cannot hold (lam 0), and taken by lean_damped_inverse only where the rows were kept."""

import numpy as np
import pytest
import torch

from prunefx.graph.channels.compensation import lean_damped_inverse, output_energy
from prunefx.graph.layer_hessians import LayerRows
from prunefx.graph.numerics.low_rank_inverse import low_rank_damped_inverse


def _rows(rows: int, columns: int, rank: int) -> torch.Tensor:
    rng = np.random.default_rng(rows + rank)
    x = rng.standard_normal((rows, rank)) @ rng.standard_normal((rank, columns)) * rng.uniform(0.1, 3.0, columns)
    return torch.from_numpy(x)


@pytest.mark.parametrize(("rows", "rank"), [(10, 10), (30, 7), (1, 1)])
def test_the_woodbury_inverse_equals_the_inverse_of_the_damped_hessian(rows, rank):
    x = _rows(rows, 200, rank)
    hessian = x.t() @ x
    lam = 0.01 * float(hessian.diagonal().mean())
    expected = np.linalg.inv(hessian.numpy() + lam * np.eye(200))
    got = low_rank_damped_inverse(x, lam)
    assert got is not None
    np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=1e-9 * np.abs(expected).max())
    through = lean_damped_inverse(hessian, 0.01, LayerRows(rows, x))
    np.testing.assert_allclose(through.numpy(), expected, rtol=0, atol=1e-9 * np.abs(expected).max())


def test_without_kept_rows_or_damping_the_full_factorisation_is_used():
    x = _rows(10, 200, 10)
    hessian = x.t() @ x
    assert low_rank_damped_inverse(x, 0.0) is None  # no damping: singular
    full = lean_damped_inverse(hessian, 0.01, LayerRows(10))
    lam = 0.01 * float(hessian.diagonal().mean())
    expected = torch.linalg.inv(hessian + lam * torch.eye(200, dtype=torch.float64))
    torch.testing.assert_close(full, expected, rtol=1e-7, atol=1e-9 * float(expected.abs().max()))


def test_the_output_energy_from_the_rows_equals_the_one_from_the_hessian():
    x = _rows(30, 200, 30)
    matrix = torch.from_numpy(np.random.default_rng(1).standard_normal((17, 200)))
    from_hessian = output_energy(matrix, x.t() @ x)
    assert output_energy(matrix, x.t() @ x, LayerRows(30, x)) == pytest.approx(from_hessian, rel=1e-12)
    assert from_hessian == pytest.approx(float(((x @ matrix.t()) ** 2).sum()), rel=1e-12)


@pytest.mark.parametrize("outputs, columns", [(7, 300), (300, 70), (5, 1)])
def test_the_output_energy_from_half_the_gram_equals_the_full_product(outputs, columns):
    """trace(M H M^T) summed over the upper blocks of M^T M against the plain product M H, for shapes whose
    blocks do and do not divide the columns evenly (one column: a single diagonal block)."""
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(2 * columns + 5, columns, generator=generator, dtype=torch.float64)
    matrix = torch.randn(outputs, columns, generator=generator, dtype=torch.float64)
    hessian = x.t() @ x
    expected = float(torch.einsum("oi,ij,oj->", matrix, hessian, matrix))
    assert output_energy(matrix, hessian) == pytest.approx(expected, rel=1e-12)
