"""(H + lam I)^-1 for a layer-input Hessian of low rank, from its calibration rows by the Woodbury identity
instead of a Cholesky factorisation and inverse of the whole matrix.

H = X^T X summed over k calibration rows has rank at most k; with few images, or deep layers at small
resolutions, that is far below its number of columns n (ResNet-50's last 3x3 convs at 224 px read 4608
columns and see 49 positions per image: 980 rows from 20 images). Where X was kept (graph/layer_hessians.py,
LayerRows), exactly

    (X^T X + lam I)^-1 = (I - X^T (lam I + X X^T)^-1 X) / lam

from a k x k factorisation and a symmetric n x n product over k (graph/numerics/symmetric_product.py) instead of
a factorisation and inverse of the n x n matrix, whose LAPACK routines run at half the product's speed.
"""

from __future__ import annotations

import torch

from prunefx.graph.numerics.symmetric_product import add_upper, mirror_upper


def low_rank_damped_inverse(rows: torch.Tensor, lam: float) -> torch.Tensor | None:
    """(X^T X + lam I)^-1 for the rows X [k, n] (float64), or None when lam is not positive (the identity
    does not hold) or lam I + X X^T is not numerically positive definite."""
    if lam <= 0:
        return None
    core = rows @ rows.t()
    core.diagonal().add_(lam)
    chol, info = torch.linalg.cholesky_ex(core)
    if int(info) != 0:
        return None
    half = torch.linalg.solve_triangular(chol, rows, upper=False)   # L^-1 X: [k, n]
    # I / lam - half^T half / lam, since X^T (lam I + X X^T)^-1 X = half^T half
    size = rows.shape[1]
    inverse = rows.new_zeros((size, size))
    inverse.diagonal().fill_(1.0 / lam)
    add_upper(inverse, half.t(), half.t(), alpha=-1.0 / lam)
    return mirror_upper(inverse)
