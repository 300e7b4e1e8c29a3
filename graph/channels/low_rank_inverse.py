"""(H + lam I)^-1 for a layer-input Hessian of low rank, by the Woodbury identity instead of a Cholesky
factorisation and inverse of the whole matrix.

H = X^T X summed over `rows` calibration rows has rank at most `rows`; with few images, or deep layers
at small resolutions, that is far below its number of columns n (ResNet-50's last 3x3 convs at 224 px
read 4608 columns and see 49 positions per image: 980 rows from 20 images). A pivoted Cholesky
factorisation H = G G^T (G: n x k, k <= rows, taken until the remaining diagonal vanishes) gives

    (G G^T + lam I)^-1 = (I - G (lam I + G^T G)^-1 G^T) / lam

in about n^2 k multiply-adds instead of n^3. What the k steps leave out (the trace of the residual,
which bounds its norm) must be below TOLERANCE * lam, or the full factorisation is used: the inverse
then differs from the full one's by about that fraction.
"""

from __future__ import annotations

import math

import torch

TOLERANCE = 1e-8      # residual trace allowed, as a fraction of lam
WORTH_IT = 0.25       # used when rows <= WORTH_IT * columns: below that the n^3 path is not much slower


def low_rank_damped_inverse(hessian: torch.Tensor, lam: float, rows: int) -> torch.Tensor | None:
    """(H + lam I)^-1 by the Woodbury identity, or None when H's rank bound `rows` is not small enough
    for it to pay, lam is not positive, or the pivoted factorisation does not reach the tolerance."""
    size = hessian.shape[0]
    if lam <= 0 or rows > WORTH_IT * size:
        return None
    factor = _pivoted_cholesky(hessian, rows, TOLERANCE * lam)
    if factor is None:
        return None
    core = factor.t() @ factor
    core.diagonal().add_(lam)
    chol, info = torch.linalg.cholesky_ex(core)
    if int(info) != 0:
        return None
    half = torch.linalg.solve_triangular(chol, factor.t(), upper=False)   # L^-1 G^T: [k, n]
    inverse = half.t() @ half                                             # G (lam I + G^T G)^-1 G^T
    inverse.neg_().diagonal().add_(1.0)
    return inverse.div_(lam)


def _pivoted_cholesky(hessian: torch.Tensor, steps: int, tolerance: float) -> torch.Tensor | None:
    """G [n, k] with H ~ G G^T, k <= steps, pivoting on the largest remaining diagonal; None when the
    residual's trace is still above `tolerance` after `steps` columns."""
    size = hessian.shape[0]
    residual = hessian.diagonal().clone()
    factor = hessian.new_zeros((size, max(steps, 1)))
    taken = 0
    while taken < steps and float(residual.sum()) > tolerance:
        pivot = int(torch.argmax(residual))
        column = hessian[:, pivot] - factor[:, :taken] @ factor[pivot, :taken]
        column /= math.sqrt(float(residual[pivot]))
        factor[:, taken] = column
        residual -= column * column
        residual.clamp_(min=0.0)
        taken += 1
    if float(residual.sum()) > tolerance:
        return None
    return factor[:, :taken]
