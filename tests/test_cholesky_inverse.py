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


@pytest.mark.parametrize(("size", "dtype"), [(1, torch.float64), (7, torch.float64), (600, torch.float64),
                                             (40, torch.float32)])
def test_the_symmetric_inverse_is_written_over_the_matrix_and_equals_the_inverse(size, dtype):
    from prunefx.graph.numerics.cholesky_inverse import symmetric_inverse_

    rng = np.random.default_rng(size)
    x = rng.standard_normal((2 * size, size))
    matrix = x.T @ x + 0.1 * np.eye(size)
    square = torch.from_numpy(matrix).to(dtype).clone()  # not numpy's storage: it is overwritten
    storage = square.data_ptr()
    assert symmetric_inverse_(square)
    assert square.data_ptr() == storage and torch.equal(square, square.t())
    expected = np.linalg.inv(matrix)
    tolerance = 1e-9 if dtype == torch.float64 else 1e-3
    np.testing.assert_allclose(square.double().numpy(), expected, rtol=0, atol=tolerance * np.abs(expected).max())


@pytest.mark.parametrize("size", [2, 700])
def test_a_matrix_that_is_not_positive_definite_has_no_symmetric_inverse_and_is_left_as_it_was(size):
    from prunefx.graph.numerics.cholesky_inverse import symmetric_inverse_

    rng = np.random.default_rng(size)
    x = rng.standard_normal((size, size))
    matrix = torch.from_numpy(x + x.T)  # indefinite: eigenvalues of both signs
    original = matrix.clone()
    assert not symmetric_inverse_(matrix)
    assert torch.equal(matrix, original)


def test_the_damped_inverse_written_over_h_is_the_damped_inverse_bit_for_bit():
    """lean_damped_inverse with `overwrite` returns H's own storage, equal to the inverse taken in a copy and to
    compensation's damped_inverse; with damping 0 on a rank-deficient H, after the same jitters."""
    from prunefx.graph.channels.compensation import damped_inverse, lean_damped_inverse

    rng = np.random.default_rng(0)
    for rows, damping in ((900, 0.01), (300, 0.0)):  # 300 rows of 600 columns: H has rank 300
        x = torch.from_numpy(rng.standard_normal((rows, 600)))
        hessian = x.t() @ x
        hessian = (hessian + hessian.t()) / 2
        copied = lean_damped_inverse(hessian, damping)
        expected = damped_inverse(hessian, damping)
        storage = hessian.data_ptr()
        written = lean_damped_inverse(hessian, damping, overwrite=True)
        assert written.data_ptr() == storage
        assert torch.equal(written, copied) and torch.equal(written, expected)


def test_scipys_openblas_factors_on_one_thread_and_keeps_its_threads_for_the_rest(monkeypatch):
    """Its threaded dpotrf kills the process from about 16,000 columns on two threads (an FCN-ResNet50 head's H):
    the factorisation runs with scipy's BLAS on one thread, read from threadpoolctl's own account of it."""
    from scipy.linalg import lapack
    from threadpoolctl import threadpool_info, threadpool_limits

    from prunefx.graph.numerics import cholesky_inverse

    def scipy_blas_threads() -> list[int]:
        return [pool["num_threads"] for pool in threadpool_info()
                if pool["user_api"] == "blas" and "scipy" in pool["filepath"] and "64_" not in pool["filepath"]]

    seen, real = [], lapack.dpotrf

    def recording(*args, **kwargs):
        seen.append(scipy_blas_threads())
        return real(*args, **kwargs)

    monkeypatch.setattr(cholesky_inverse.lapack, "dpotrf", recording)
    matrix = torch.randn(40, 32, dtype=torch.float64)
    square = matrix.t() @ matrix
    with threadpool_limits(limits=2, user_api="blas"):  # as on two cores, whatever the tests' environment says
        before = scipy_blas_threads()
        assert cholesky_inverse.symmetric_inverse_(square)
        after = scipy_blas_threads()
    assert before == after == [2] and seen == [[1]]


def test_the_inverse_of_an_fcn_heads_size_on_two_threads_finishes_and_is_the_inverse():
    """The regression itself (tests/zoo_lane.txt: 4 GB, about a minute on 2 cores): 16,384 columns with scipy's BLAS on two
    threads, where its threaded dpotrf killed the process. Oracle: A^-1 (A p) = p for random p."""
    from threadpoolctl import threadpool_limits

    from prunefx.graph.numerics.cholesky_inverse import symmetric_inverse_

    size = 16384
    generator = torch.Generator().manual_seed(0)
    square = torch.rand(size, size, dtype=torch.float64, generator=generator)
    square += square.t().clone()
    square.diagonal().add_(2.0 * size)  # diagonally dominant: positive definite, made in O(n^2)
    probe = torch.randn(size, 2, dtype=torch.float64, generator=generator)
    product = square @ probe
    with threadpool_limits(limits=2, user_api="blas"):
        assert symmetric_inverse_(square)
    torch.testing.assert_close(square @ product, probe, rtol=0, atol=1e-6)
