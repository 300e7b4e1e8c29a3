"""(L L^T)^-1 from a lower Cholesky factor L, written over L's own storage. On the CPU in float64 by
LAPACK's dpotri through scipy: torch's cholesky_inverse (MKL) ran at a third of its speed on the AMD EPYC
machines the benchmarks use (docs/benchmarks/tool-speed.md). Elsewhere torch's."""

from __future__ import annotations

import torch
from scipy.linalg import lapack

_BLOCK = 512  # rows mirrored at a time


def cholesky_inverse_(factor: torch.Tensor) -> torch.Tensor:
    """The symmetric inverse of L L^T, in `factor` (a contiguous lower-triangular L, overwritten)."""
    if factor.device.type != "cpu" or factor.dtype != torch.float64 or not factor.is_contiguous():
        return torch.cholesky_inverse(factor, out=factor)
    # A C-ordered lower L is a Fortran-ordered upper U = L^T: dpotri's upper triangle of (U^T U)^-1 is
    # then the C-ordered lower triangle.
    _, info = lapack.dpotri(factor.numpy().T, lower=0, overwrite_c=1)
    if info != 0:
        raise torch.linalg.LinAlgError(f"dpotri failed (info {info})")
    return _mirror_lower(factor)


def _mirror_lower(square: torch.Tensor) -> torch.Tensor:
    """Fill the upper triangle of `square` from its lower one, in place, a block of rows at a time."""
    size = square.shape[0]
    for start in range(0, size, _BLOCK):
        stop = min(start + _BLOCK, size)
        square[start:stop, stop:] = square[stop:, start:stop].t()
        diagonal = square[start:stop, start:stop]
        upper = torch.triu_indices(stop - start, stop - start, 1)
        diagonal[upper[0], upper[1]] = diagonal[upper[1], upper[0]]
    return square
