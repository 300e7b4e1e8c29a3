"""The least-squares solution of a symmetric positive semi-definite system that Cholesky cannot factor (damping 0
on an input that is zero on all calibration data). Not torch.linalg.lstsq: on a GPU its only driver, gels,
assumes full rank and returns infinities or an error where the CPU's gelsy gives the minimum-norm solution;
the pseudo-inverse from the eigen-decomposition gives that solution on every device."""

from __future__ import annotations

import torch


def semidefinite_solve(matrix: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """The minimum-norm X of `matrix` X = `rhs` (symmetric, positive semi-definite; batches too)."""
    return torch.linalg.pinv(matrix, hermitian=True) @ rhs
