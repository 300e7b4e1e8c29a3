"""The inverse from a Cholesky factor, written over the factor (graph/numerics/cholesky_inverse.py), equals numpy's
inverse of L L^T and is exactly symmetric, on the LAPACK path (float64, CPU) and torch's (float32)."""

import numpy as np
import pytest
import torch

from prunefx.graph.numerics.cholesky_inverse import cholesky_inverse_


@pytest.mark.parametrize(("size", "dtype"), [(1, torch.float64), (7, torch.float64), (513, torch.float64),
                                             (1100, torch.float64), (40, torch.float32)])
def test_the_inverse_from_the_factor_equals_the_inverse(size, dtype):
    rng = np.random.default_rng(size)
    x = rng.standard_normal((2 * size, size))
    matrix = x.T @ x + 0.1 * np.eye(size)
    factor = torch.linalg.cholesky(torch.from_numpy(matrix).to(dtype))
    storage = factor.data_ptr()
    inverse = cholesky_inverse_(factor)
    assert inverse.data_ptr() == storage  # written over the factor, no second matrix
    assert torch.equal(inverse, inverse.t())
    expected = np.linalg.inv(matrix)
    tolerance = 1e-9 if dtype == torch.float64 else 1e-3
    np.testing.assert_allclose(inverse.double().numpy(), expected, rtol=0, atol=tolerance * np.abs(expected).max())
