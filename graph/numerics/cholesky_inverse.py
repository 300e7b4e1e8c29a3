"""(L L^T)^-1 from a lower Cholesky factor L, written over L's own storage; and A^-1 of a symmetric positive
definite A written over A, the factor made in place too. On the CPU in float64 by LAPACK's dpotri through
scipy: torch's cholesky_inverse (MKL) ran at a third of its speed on the AMD EPYC machines the benchmarks use
(docs/benchmarks/tool-speed.md). Elsewhere torch's.

scipy's OpenBLAS (0.3.30) factors with dpotrf on one thread: its threaded dpotrf writes out of bounds and kills
the process from about 16,000 columns on two threads (an FCN-ResNet50 head's 18,432-column H; 14,336 passed),
the family of OpenBLAS issues #352 and #2562. Serial, it is in place still and about half as fast on two cores,
a small part of a calibrated prune; dpotri stays threaded."""

from __future__ import annotations

import os

import torch
from scipy.linalg import lapack

from prunefx.graph.numerics.symmetric_product import fill_upper_from_lower

# threadpoolctl's import sets KMP_DUPLICATE_LIB_OK=True in the process's environment, where every process it
# starts (a measuring worker, trtexec) inherits it: Intel's OpenMP would then load twice without a word
_ENVIRONMENT_KEY = "KMP_DUPLICATE_LIB_OK"


def _threadpool_controller():
    """threadpoolctl's controller of the BLAS libraries loaded (scipy's among them), the environment left as found."""
    before = os.environ.get(_ENVIRONMENT_KEY)
    try:
        from threadpoolctl import ThreadpoolController
    finally:
        if before is None:
            os.environ.pop(_ENVIRONMENT_KEY, None)
        else:
            os.environ[_ENVIRONMENT_KEY] = before
    return ThreadpoolController()


_THREADPOOLS = _threadpool_controller()  # finds the libraries once


def cholesky_inverse_(factor: torch.Tensor) -> torch.Tensor:
    """The symmetric inverse of L L^T, in `factor` (a contiguous lower-triangular L, overwritten)."""
    if factor.device.type != "cpu" or factor.dtype != torch.float64 or not factor.is_contiguous():
        return torch.cholesky_inverse(factor, out=factor)
    # A C-ordered lower L is a Fortran-ordered upper U = L^T: dpotri's upper triangle of (U^T U)^-1 is
    # then the C-ordered lower triangle.
    _, info = lapack.dpotri(factor.numpy().T, lower=0, overwrite_c=1)
    if info != 0:
        raise torch.linalg.LinAlgError(f"dpotri failed (info {info})")
    return fill_upper_from_lower(factor)


def symmetric_inverse_(square: torch.Tensor) -> bool:
    """A^-1 of the symmetric `square` (contiguous), written over it; False when A is not positive definite,
    `square` then left as it was. On the CPU in float64 nothing else of its size is allocated: torch factors
    a row-major matrix in a column-major copy (a ViT-L MLP's H: 134 MB more at the moment the second-order
    choice needs most memory), where LAPACK can factor A's own storage, read in Fortran order as A^T = A,
    and leaves the other triangle as it was (the way back when A is not positive definite)."""
    if square.device.type != "cpu" or square.dtype != torch.float64 or not square.is_contiguous():
        factor, info = torch.linalg.cholesky_ex(square)
        if int(info) != 0:
            return False
        square.copy_(torch.cholesky_inverse(factor))
        return True
    diagonal = square.diagonal().clone()
    fortran = square.numpy().T  # its lower triangle is row-major's upper one
    with _THREADPOOLS.limit(limits=1, user_api="blas"):
        _, info = lapack.dpotrf(fortran, lower=1, clean=0, overwrite_a=1)
    if info != 0:
        fill_upper_from_lower(square)  # the upper triangle back from the lower one, which LAPACK did not touch
        square.diagonal().copy_(diagonal)
        return False
    _, info = lapack.dpotri(fortran, lower=1, overwrite_c=1)
    if info != 0:
        raise torch.linalg.LinAlgError(f"dpotri failed (info {info})")
    fill_upper_from_lower(square.mT)  # the inverse is in row-major's upper triangle
    return True

