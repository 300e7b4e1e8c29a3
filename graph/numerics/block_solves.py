"""Solves against a batch of small symmetric blocks (the s x s diagonal blocks of an inverse Hessian, one per
channel, in an OBS elimination: graph/channels/obs_layer_state.py), each in a fast and an unchecked form: on a GPU
reading whether a factorisation held waits for the device's queue, so the unchecked form returns that flag on the
device for the caller to read when it reads other values, or once at the end."""

from __future__ import annotations

import torch

from prunefx.graph.numerics.semidefinite_solve import semidefinite_solve


def quadratic_forms(blocks: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """trace(W_i^T B_i^-1 W_i) for every i of blocks [n, s, s] (symmetric positive definite: diagonal
    blocks of an inverse Hessian) and weights [n, s, outputs]: the sum of B_i^-1 * (W_i W_i^T), the s x s
    inverses from a Cholesky factor and the Gram matrices by one batched product (a batch of triangular
    solves against the `outputs` columns runs a matrix at a time on the CPU, far slower); the LU solve
    where a block is not positive definite. One column per channel (1x1 convolutions, linear layers): a
    division, not a batch of 1 x 1 solves."""
    if blocks.shape[1] == 1 and bool((blocks > 0).all()):
        return weights.square().sum(dim=(1, 2)) / blocks[:, 0, 0]
    factor, info = torch.linalg.cholesky_ex(blocks)
    if bool((info != 0).any()):
        return (weights * solve(blocks, weights)).sum(dim=(1, 2))
    return (torch.cholesky_inverse(factor) * torch.bmm(weights, weights.transpose(1, 2))).sum(dim=(1, 2))


def quadratic_forms_unchecked(blocks: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """quadratic_forms' fast path, without reading whether it applies: (values, a 0-d tensor saying whether every
    block is positive: the values stand; where not, quadratic_forms gives them)."""
    factor, info = torch.linalg.cholesky_ex(blocks)
    products = torch.bmm(weights, weights.transpose(1, 2))
    return (torch.cholesky_inverse(factor) * products).sum(dim=(1, 2)), (info == 0).all()


def solve(block: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """block^-1 right by LU; the minimum-norm solution where the block is singular (semidefinite_solve)."""
    solved, factored = solve_unchecked(block, right)
    return solved if bool(factored) else semidefinite_solve(block, right)


def solve_unchecked(block: torch.Tensor, right: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The LU solve without reading whether it factored (on a GPU a read waits for the device's queue): the
    solution and a 0-d tensor, False where a block was singular (then the solution is not one)."""
    solved, info = torch.linalg.solve_ex(block, right)
    return solved, (info == 0).all()
