"""The Woodbury path of the damped inverse (graph/channels/low_rank_inverse.py): equal to numpy's inverse
of H + lam I when H has few rows, including a rank below its row count; not taken where it does not pay
or cannot hold (lam 0)."""

import numpy as np
import pytest
import torch

from prunefx.graph.channels.low_rank_inverse import low_rank_damped_inverse
from prunefx.graph.channels.obs_elimination import lean_damped_inverse


def _hessian(rows: int, columns: int, rank: int) -> torch.Tensor:
    rng = np.random.default_rng(rows + rank)
    x = rng.standard_normal((rows, rank)) @ rng.standard_normal((rank, columns)) * rng.uniform(0.1, 3.0, columns)
    return torch.from_numpy(x.T @ x)


@pytest.mark.parametrize(("rows", "rank"), [(10, 10), (30, 7), (1, 1)])
def test_the_woodbury_inverse_equals_the_inverse_of_the_damped_hessian(rows, rank):
    hessian = _hessian(rows, 200, rank)
    lam = 0.01 * float(hessian.diagonal().mean())
    expected = np.linalg.inv(hessian.numpy() + lam * np.eye(200))
    got = low_rank_damped_inverse(hessian, lam, rows)
    assert got is not None
    np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=1e-9 * np.abs(expected).max())
    through = lean_damped_inverse(hessian, 0.01, rows)
    np.testing.assert_allclose(through.numpy(), expected, rtol=0, atol=1e-9 * np.abs(expected).max())


def test_the_woodbury_path_is_left_where_it_does_not_pay_or_hold():
    hessian = _hessian(120, 200, 120)
    assert low_rank_damped_inverse(hessian, 1.0, 120) is None      # rows > a quarter of the columns
    assert low_rank_damped_inverse(_hessian(10, 200, 10), 0.0, 10) is None  # no damping: singular
    # the rows given understate the rank: the factorisation does not reach the tolerance
    assert low_rank_damped_inverse(_hessian(30, 200, 30), 0.01, 10) is None
