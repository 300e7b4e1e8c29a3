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

On the CPU only, by LAPACK's blocked pivoted Cholesky (scipy's dpstrf) and BLAS's syrk for the final
product (one triangle); on a GPU the full factorisation is fast enough that this path is not taken.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.linalg import blas, lapack

TOLERANCE = 1e-8      # residual trace allowed, as a fraction of lam
WORTH_IT = 0.25       # used when rows <= WORTH_IT * columns: below that the n^3 path is not much slower


def low_rank_damped_inverse(hessian: torch.Tensor, lam: float, rows: int) -> torch.Tensor | None:
    """(H + lam I)^-1 by the Woodbury identity, or None when H's rank bound `rows` is not small enough
    for it to pay, lam is not positive, or the pivoted factorisation does not reach the tolerance."""
    size = hessian.shape[0]
    if lam <= 0 or rows > WORTH_IT * size or hessian.device.type != "cpu" or hessian.dtype != torch.float64:
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
    # G (lam I + G^T G)^-1 G^T = half^T half, one triangle by syrk
    inverse = _mirror_upper(blas.dsyrk(1.0, half.numpy().T, trans=0, lower=0))
    inverse.neg_().diagonal().add_(1.0)
    return inverse.div_(lam)


def _pivoted_cholesky(hessian: torch.Tensor, steps: int, tolerance: float) -> torch.Tensor | None:
    """G [n, k] with H ~ G G^T, k <= steps, pivoting on the largest remaining diagonal; None when the
    residual's trace is still above `tolerance` after `steps` columns. LAPACK stops once no pivot is
    above tolerance / n (then the residual's trace is below tolerance); pivots past `steps` only
    rounding leaves are dropped, and the trace is checked from what G leaves of diag H."""
    size = hessian.shape[0]
    work = hessian.numpy().copy(order="F")
    factor, pivots, rank, _ = lapack.dpstrf(work, lower=1, tol=tolerance / size, overwrite_a=1)
    taken = min(int(rank), steps)
    columns = np.tril(factor[:, :taken])            # L of H[p][:, p] = L L^T, its first `taken` columns
    result = np.empty_like(columns)
    result[pivots - 1] = columns                    # undo the pivoting: rows back in H's order
    residual = hessian.diagonal().numpy() - np.einsum("ij,ij->i", result, result)
    if float(np.clip(residual, 0.0, None).sum()) > tolerance:
        return None
    return torch.from_numpy(result)


def _mirror_upper(total: np.ndarray) -> torch.Tensor:
    """The symmetric matrix whose upper triangle BLAS's syrk wrote into `total` (Fortran-ordered), as a
    C-ordered tensor sharing its memory: the lower triangle is filled in place, block by block (no
    second n x n array)."""
    size, block = total.shape[0], 512
    for start in range(block, size, block):
        total[start:start + block, :start] = total[:start, start:start + block].T
    for start in range(0, size, block):  # the diagonal blocks' lower triangles
        square = total[start:start + block, start:start + block]
        lower = np.tril_indices(square.shape[0], -1)
        square[lower] = square.T[lower]
    return torch.from_numpy(total.T)  # symmetric: its transpose is the same matrix, C-ordered
