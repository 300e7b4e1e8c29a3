"""Symmetric products summed a block-row at a time, the upper block triangle only, and mirrored once at the
end: with 8 block-rows that is 9/16 of the multiply-adds of the full product. Layer-input Hessians X^T X
(their sum over calibration rows is most of the time of `--calibrate`) and the OBS elimination's downdates
of an inverse Hessian are such products, and so is a layer's output energy trace(M H M^T) = sum(H * M^T M)
(symmetric_trace). Torch's product on views of the one
matrix, not BLAS's syrk: a second thread pool beside torch's made the sum slower on two cores."""

from __future__ import annotations

import math

import torch

BLOCK_ROWS = 8
MIN_WIDTH = 64  # narrower blocks multiply far below the product's speed
TRIANGLE_BLOCK = 512  # rows mirrored at a time by fill_upper_from_lower, the side of a transposed tile


def _edges(columns: int) -> list[int]:
    width = max(MIN_WIDTH, math.ceil(columns / BLOCK_ROWS))
    return [*range(0, columns, width), columns]


def add_upper_gram(gram: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    """gram += x^T x on and above the diagonal blocks (gram made on first use; blocks below stay stale
    until mirror_upper)."""
    if gram is None:
        gram = x.new_zeros((x.shape[1], x.shape[1]))
    return add_upper(gram, x.t(), x.t())


def add_upper(out: torch.Tensor, left: torch.Tensor, right: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """out += alpha left right^T on and above the diagonal blocks, for a product known to be symmetric
    (left, right: [n, k])."""
    edges = _edges(out.shape[0])
    for start, stop in zip(edges, edges[1:]):
        out[start:stop, start:].addmm_(left[start:stop], right[start:].t(), alpha=alpha)
    return out


def mirror_upper(gram: torch.Tensor) -> torch.Tensor:
    """The symmetric matrix whose upper blocks add_upper_gram summed, written in place."""
    edges = _edges(gram.shape[0])
    for start, stop in zip(edges, edges[1:]):
        gram[stop:, start:stop] = gram[start:stop, stop:].t()
    return gram


def fill_upper_from_lower(square: torch.Tensor) -> torch.Tensor:
    """Fill the upper triangle of `square` from its lower one, in place, a block of rows at a time (on its
    transpose `.mT`: the lower from the upper)."""
    size = square.shape[0]
    for start in range(0, size, TRIANGLE_BLOCK):
        stop = min(start + TRIANGLE_BLOCK, size)
        _transposed_into(square[start:stop, stop:], square[stop:, start:stop])
        diagonal = square[start:stop, start:stop]
        upper = torch.triu_indices(stop - start, stop - start, 1)
        diagonal[upper[0], upper[1]] = diagonal[upper[1], upper[0]]
    return square


def _transposed_into(target: torch.Tensor, source: torch.Tensor) -> None:
    """target = source^T, a square tile of TRIANGLE_BLOCK at a time: copied whole, a wide strip from a tall one
    read column by column made fill_upper_from_lower twice as slow on a 4096-column H."""
    rows, columns = target.shape
    for row in range(0, rows, TRIANGLE_BLOCK):
        for column in range(0, columns, TRIANGLE_BLOCK):
            target[row:row + TRIANGLE_BLOCK, column:column + TRIANGLE_BLOCK] = \
                source[column:column + TRIANGLE_BLOCK, row:row + TRIANGLE_BLOCK].t()


def symmetric_trace(matrix: torch.Tensor, symmetric: torch.Tensor) -> float:
    """trace(M S M^T) for a symmetric S [n, n] and M [k, n], as the sum of S * (M^T M) over the upper block
    triangle (blocks right of the diagonal counted twice): half the multiply-adds of the product M S, and a
    block-row of M^T M at a time, never all of it (a U-Net decoder's 12k-column S would take 1.2 GB)."""
    edges = _edges(symmetric.shape[0])
    total = torch.zeros((), dtype=torch.float64, device=symmetric.device)  # read once: on a GPU a read waits
    for start, stop in zip(edges, edges[1:]):
        gram = matrix[:, start:stop].t() @ matrix[:, start:]              # [stop - start, n - start]
        part = symmetric[start:stop, start:]
        width = stop - start
        total += (part[:, :width] * gram[:, :width]).sum().double() + 2.0 * (part[:, width:] * gram[:, width:]).sum().double()
    return float(total)
