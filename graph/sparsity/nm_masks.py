"""N:M sparsity masks and second-order weight updates: pure tensor math, no graph.

Weights are handled as a "grouped matrix" [K, taps * C] whose every M consecutive columns are one group of
input channels of one kernel tap, TensorRT's layout; N:M keeps N of every M (NVIDIA's convention). Criteria:
`magnitude_mask`, `obs_prune` (SparseGPT), `cap_eliminate` (CAP) and CAP's unstructured `global_counts`;
everything second order in float64. The layout and the updates: see docs/algorithms.md, 'Masks and weight updates'.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from prunefx.graph.channels.compensation import damped_inverse
from prunefx.graph.errors import PrunefxError

_COLUMN_BLOCK = 128  # SparseGPT's lazy-update block (a multiple of every M we accept)


@dataclass(frozen=True)
class Pattern:
    """N:M: at most `kept` non-zeros in every `group` consecutive input channels."""

    kept: int
    group: int

    @classmethod
    def parse(cls, text: str) -> Pattern:
        parts = str(text).split(":")
        try:
            kept, group = (int(p) for p in parts)
        except ValueError:
            raise PrunefxError(f"an N:M pattern looks like '2:4', not {text!r}") from None
        if not 0 < kept <= group or _COLUMN_BLOCK % group:
            raise PrunefxError(f"pattern {text!r}: need 0 < N <= M and M dividing {_COLUMN_BLOCK} (e.g. 2:4, 4:8)")
        return cls(kept, group)

    @property
    def pruned(self) -> int:
        return self.group - self.kept

    def __str__(self) -> str:
        return f"{self.kept}:{self.group}"


# --- layout --------------------------------------------------------------------------------------------

def grouped_matrix(weight: torch.Tensor) -> torch.Tensor:
    """[K, C] stays; [K, C, R, S] becomes [K, R * S * C] (the M-groups of input channels consecutive)."""
    return weight if weight.dim() == 2 else weight.permute(0, 2, 3, 1).reshape(weight.shape[0], -1)


def weight_from_grouped(matrix: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """The inverse of grouped_matrix for a weight of `shape`."""
    if len(shape) == 2:
        return matrix.reshape(shape)
    k, c, r, s = shape
    return matrix.reshape(k, r, s, c).permute(0, 3, 1, 2).contiguous()


def unfold_to_grouped(shape: torch.Size) -> torch.Tensor:
    """perm with grouped column j = unfolded column perm[j] (unfolded: c * taps + tap)."""
    channels, taps = shape[1], (shape[2] * shape[3] if len(shape) == 4 else 1)
    return torch.arange(channels * taps).reshape(channels, taps).t().reshape(-1)


def grouped_hessian(hessian: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """A layer-input Hessian over unfolded columns, reordered to the grouped columns of a weight of `shape`."""
    perm = unfold_to_grouped(shape).to(hessian.device)
    return hessian[perm][:, perm]


def pattern_violations(weight: torch.Tensor, pattern: Pattern) -> int:
    """How many M-groups of input channels hold more than N non-zeros (0: the weight obeys the pattern)."""
    groups = grouped_matrix(weight).reshape(weight.shape[0], -1, pattern.group)
    return int(((groups != 0).sum(-1) > pattern.kept).sum())


# --- magnitude -----------------------------------------------------------------------------------------

def magnitude_mask(matrix: torch.Tensor, pattern: Pattern) -> torch.Tensor:
    """Boolean keep-mask of a grouped matrix: the N largest |w| of every group (ties: the first)."""
    groups = matrix.abs().reshape(matrix.shape[0], -1, pattern.group)
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(-1, groups.topk(pattern.kept, dim=-1).indices, True)
    return keep.reshape(matrix.shape)


# --- OBS on the layer-input Hessian (SparseGPT) --------------------------------------------------------

def _upper_inverse_factor(hessian: torch.Tensor, damping: float) -> torch.Tensor | None:
    """Upper Cholesky factor U of (H + lam I)^-1 (U^T U = H^-1), or None when H is zero."""
    inverse = damped_inverse(hessian, damping)
    if inverse is None:
        return None
    scale = float(inverse.diagonal().mean())
    eye = torch.eye(inverse.shape[0], dtype=inverse.dtype, device=inverse.device)
    for jitter in (0.0, 1e-12, 1e-10, 1e-8):  # H^-1 of an ill-conditioned H can lose definiteness in rounding
        factor, info = torch.linalg.cholesky_ex(inverse + jitter * scale * eye, upper=True)
        if int(info) == 0:
            return factor
    raise PrunefxError("the damped layer Hessian is not positive definite; raise the damping")


def obs_prune(matrix: torch.Tensor, hessian: torch.Tensor, pattern: Pattern, *, damping: float = 0.01
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """SparseGPT N:M pruning of a grouped matrix [K, D] with the grouped Hessian [D, D] (float64).

    Returns (updated matrix with the pruned weights exactly zero, keep-mask). Falls back to the
    magnitude mask without updates when H is zero (an input that is zero on all calibration data)."""
    weights = matrix.detach().double().clone()
    factor = _upper_inverse_factor(hessian.double().to(weights.device), damping)
    if factor is None:
        keep = magnitude_mask(weights, pattern)
        return weights * keep, keep
    keep = torch.ones_like(weights, dtype=torch.bool)
    columns = weights.shape[1]
    for start in range(0, columns, _COLUMN_BLOCK):
        end = min(start + _COLUMN_BLOCK, columns)
        errors = _obs_column_block(weights, factor, keep, start, end, pattern)
        weights[:, end:] -= errors @ factor[start:end, end:]  # the block's errors, propagated lazily
    return weights * keep, keep


def _obs_column_block(weights, factor, keep, start: int, end: int, pattern: Pattern) -> torch.Tensor:
    """Prune columns start..end in place (choosing each group's mask at its first column) and return
    the scaled errors (w - q) / U_jj of these columns, [K, end - start]."""
    block = weights[:, start:end]
    local = factor[start:end, start:end]
    diagonal = local.diagonal()
    errors = torch.zeros_like(block)
    for i in range(end - start):
        if i % pattern.group == 0 and pattern.pruned:
            saliency = block[:, i:i + pattern.group] ** 2 / diagonal[i:i + pattern.group] ** 2
            doomed = saliency.topk(pattern.pruned, dim=1, largest=False).indices + i
            keep[:, start:end].scatter_(1, doomed, False)  # a view: writes through to keep
        column = block[:, i]
        pruned_part = torch.where(keep[:, start + i], torch.zeros_like(column), column)
        errors[:, i] = pruned_part / diagonal[i]
        block[:, i:] -= errors[:, i:i + 1] * local[i:i + 1, i:]
        block[:, i] = torch.where(keep[:, start + i], block[:, i], torch.zeros_like(column))
    return errors


# --- CAP: empirical-Fisher blocks ---------------------------------------------------------------------

def blocks_of(vector: torch.Tensor, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A flat vector as [blocks, B], zero-padded; and the mask of real (not padded) entries."""
    padding = -vector.numel() % block_size
    valid = torch.ones(vector.numel() + padding, dtype=torch.bool, device=vector.device)
    if padding:
        valid[vector.numel():] = False
        vector = torch.cat([vector, vector.new_zeros(padding)])
    return vector.reshape(-1, block_size), valid.reshape(-1, block_size)


class FisherInverse:
    """(lam I + (1/m) sum_i g_i g_i^T)^-1 over blocks of B consecutive weights, built from I / lam by one
    Sherman-Morrison update per gradient sample. `samples` (m) must be known up front: it scales every
    update. Gradients are rows of flattened grouped matrices; `add` takes [n, numel] at a time."""

    def __init__(self, numel: int, block_size: int, samples: int, damping: float, *, device=None):
        if samples < 1:
            raise PrunefxError("the empirical Fisher needs at least one gradient sample")
        if not damping > 0:
            raise PrunefxError(f"the empirical Fisher needs a damping > 0 (it is low rank), not {damping}")
        self.numel, self.block_size, self.samples = numel, block_size, samples
        count = -(-numel // block_size)
        eye = torch.eye(block_size, dtype=torch.float64, device=device)
        self.inverse = eye.expand(count, block_size, block_size) / damping

    def add(self, gradients: torch.Tensor) -> None:
        for gradient in gradients.double():
            blocks, _ = blocks_of(gradient.reshape(-1), self.block_size)
            projected = torch.bmm(self.inverse, blocks.unsqueeze(-1)).squeeze(-1)  # F^-1 g per block
            scale = torch.sqrt(self.samples + (blocks * projected).sum(-1, keepdim=True))
            update = projected / scale
            self.inverse = self.inverse - update.unsqueeze(-1) * update.unsqueeze(-2)


def cap_eliminate(weights: torch.Tensor, inverse: torch.Tensor, valid: torch.Tensor, counts: torch.Tensor,
                  pattern: Pattern | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Remove counts[b] weights of block b one at a time (CAP), from blocks [nb, B] and F^-1 [nb, B, B].

    With a pattern, a weight may not go once its group of M has lost M - N. Returns the updated weights
    (removed ones exactly zero), the removed mask and the cumulative loss sum(rho) / 2 after each step
    ([nb, max count]; inf where a block had stopped). The inputs are not modified."""
    w, finv = weights.double().clone(), inverse.double().clone()
    blocks, size = w.shape
    rows = torch.arange(blocks, device=w.device)
    removed = ~valid.clone()
    lost = torch.zeros(blocks, size // pattern.group if pattern else 1, dtype=torch.long, device=w.device)
    if pattern is not None:  # padded groups count as full: they are never touched
        lost += (~valid).reshape(blocks, -1, pattern.group).sum(-1) * pattern.pruned
    steps = int(counts.max()) if counts.numel() else 0
    losses = torch.full((blocks, steps), float("inf"), dtype=torch.float64, device=w.device)
    total = torch.zeros(blocks, dtype=torch.float64, device=w.device)
    for step in range(steps):
        allowed = ~removed
        if pattern is not None:
            allowed &= (lost < pattern.pruned).repeat_interleave(pattern.group, dim=1)
        diagonal = finv.diagonal(dim1=1, dim2=2)
        saliency = torch.where(allowed, w ** 2 / diagonal.clamp_min(1e-300), torch.full_like(w, float("inf")))
        best, q = saliency.min(dim=1)
        active = (counts > step) & torch.isfinite(best)
        column = finv[rows, :, q]  # F^-1[:, q] per block
        pivot = column[rows, q].clamp_min(1e-300)
        ratio = torch.where(active, w[rows, q] / pivot, torch.zeros_like(pivot))
        w -= ratio.unsqueeze(1) * column
        gate = active.double().unsqueeze(1) / pivot.unsqueeze(1)
        finv -= (column * gate).unsqueeze(2) * column.unsqueeze(1)
        removed[rows[active], q[active]] = True
        if pattern is not None:
            lost[rows[active], q[active] // pattern.group] += 1
        w[removed] = 0.0  # exact zeros (the downdated F^-1 leaves rounding residue on removed rows)
        total += torch.where(active, best / 2, torch.zeros_like(best))
        losses[:, step] = torch.where(active, total, losses[:, step])
    return w, removed & valid, losses


def nm_counts(valid: torch.Tensor, pattern: Pattern) -> torch.Tensor:
    """Weights each block loses under N:M: (M - N) per real group."""
    return valid.sum(1) // pattern.group * pattern.pruned


def global_counts(curves: list[torch.Tensor], fraction: float) -> list[torch.Tensor]:
    """CAP's single loss threshold: per block, how many weights go so that `fraction` of all real
    weights is removed, taking the removals with the smallest cumulative loss across every block of
    every curve ([nb, steps] cumulative losses, inf where impossible). Curves are non-decreasing per
    block, so "loss <= threshold" is a prefix of each block's elimination order."""
    values = torch.cat([c.reshape(-1) for c in curves])
    finite = int(torch.isfinite(values).sum())
    wanted = min(int(round(fraction * finite)), finite)
    if wanted == 0:
        return [torch.zeros(c.shape[0], dtype=torch.long, device=c.device) for c in curves]
    threshold = values.kthvalue(wanted).values
    return [(c <= threshold).sum(1) for c in curves]


# --- evaluation ----------------------------------------------------------------------------------------

def relative_output_error(original: torch.Tensor, updated: torch.Tensor, hessian: torch.Tensor) -> float:
    """trace(D H D^T) / trace(M H M^T), D = updated - original (matrices and H in the same column order):
    the layer's squared output change on the data H was gathered on, relative to its output energy."""
    change = (updated - original).double()
    energy = float((original.double() @ hessian * original.double()).sum())
    return float((change @ hessian * change).sum()) / max(energy, 1e-300)
