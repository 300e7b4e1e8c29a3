"""One layer's state while a group of channels is eliminated (obs_elimination.py runs the loop; saliency.py
has the formulas): its weights, updated as compensation would, and its inverse damped Hessian restricted to the
group's columns, downdated lazily (LayerState); a layer with fewer calibration rows than columns, scored without
compensation (UncompensatedState); and the errors either gives a step, left on the device until read (ErrorTerm).
The solves against its s x s blocks are graph/numerics/block_solves.py's.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from prunefx.graph.heap import release_freed_memory
from prunefx.graph.numerics.block_solves import (
    quadratic_forms,
    quadratic_forms_unchecked,
    solve,
    solve_unchecked,
)
from prunefx.graph.numerics.symmetric_product import add_upper, add_upper_gram, mirror_upper


class LayerState:
    """One layer's state during the elimination of one group, restricted to the group's columns (the
    elimination never reads another column: a channel's dE needs its own block of H^-1 and its own
    weights, and the downdate of the group's block of H^-1 needs only that block, a Schur complement):

    - `columns_major`, its weights transposed [columns, outputs] (a copy, or a smaller factor of M^T M:
      _column_factor), updated by every removal as compensation would: a channel's weights are then
      rows, gathered without a strided copy;
    - `base` and the deferred downdates `left` @ `right`^T: the inverse of the damped Hessian restricted
      to the columns not yet removed is base - left[:, :used] @ right[:, :used]^T. `base` starts as the
      layer's full inverse, shared with the other groups that read the layer and never written: the
      downdates (rank s per removed channel) are applied in one product once `used` reaches the
      buffers' capacity, which also drops the removed and the other groups' columns. A rank-9 update of
      a 10k x 10k matrix per step is bound by memory traffic; a rank-512 one by arithmetic.
    - `blocks`: per bucket of channels with as many columns, their diagonal blocks of the current
      inverse [channels, s, s], downdated at every removal (all that the errors need);
    - `place`: layer column -> its row in `base` and in `columns_major`, -1 once removed (or not in
      the group)."""

    CAPACITY = 512  # deferred columns before the downdates are applied to `base` (at most, see _buffers)

    def __init__(self, matrix: torch.Tensor, inverse: torch.Tensor, energy: float,
                 columns: dict[int, torch.Tensor]):
        self.columns_major, self.base, self.energy = _column_factor(matrix), inverse, energy
        self.owned = False  # whether `base` is this state's alone (then compacted in place)
        self.columns = columns  # channel index in the group -> its original columns in this layer
        device = matrix.device
        self.place = torch.full((matrix.shape[1],), -1, dtype=torch.long, device=device)
        for cols in columns.values():
            self.place[cols] = cols
        if 2 * int((self.place >= 0).sum()) <= self.place.numel():
            self._compact()  # a small slice of a wide layer (a skip connection's share of a concat): copy it
        self.used, self.left, self.right = 0, None, None
        self.factored: torch.Tensor | None = None  # whether every removal's block factored so far (0-d, on the device)
        # channels with as many columns, their columns as one [channels, s] index (solved in one batch),
        # and their diagonal blocks of the inverse
        self.buckets = []
        for channels, index in _buckets(columns):
            at = self.place[index]
            self.buckets.append((channels, index, self.base[at[:, :, None], at[:, None, :]]))

    def error_terms(self, alive: np.ndarray) -> list[ErrorTerm]:
        """dE of removing each alive channel (alone) from the current state, per bucket, left on the device:
        `eliminate` reads every layer's at once (read_terms)."""
        terms, squared_norms = [], None
        for channels, index, blocks in self.buckets:
            rows = np.flatnonzero(alive[channels])
            if not rows.size:
                continue
            rows_t = _on(index.device, rows)
            if index.shape[1] == 1:  # one column a channel: its weights' squared norm over its 1 x 1 block
                if squared_norms is None:  # every row's, read in place: no gathered copy of the weights
                    squared_norms = torch.linalg.vector_norm(self.columns_major, dim=1).square()
                kept_blocks = blocks.index_select(0, rows_t)
                values = squared_norms[self.place[index[:, 0].index_select(0, rows_t)]] / kept_blocks[:, 0, 0]
                usable = (kept_blocks > 0).all()
            else:
                values, usable = quadratic_forms_unchecked(*self._gathered(index, blocks, rows_t))
            # gathered again if ever needed, not held: a step holds every layer's terms until it reads them (a
            # ViT-L residual stream's 49 layers would hold 49 copies of their weights at once)
            terms.append(ErrorTerm(channels[rows], self.energy, values, usable,
                                   lambda i=index, b=blocks, r=rows_t: quadratic_forms(*self._gathered(i, b, r))))
        return terms

    def _gathered(self, index: torch.Tensor, blocks: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The diagonal blocks [n, s, s] and the weights [n, s, outputs] of a bucket's channels at `rows`."""
        return blocks.index_select(0, rows), self.columns_major[self.place[index.index_select(0, rows)]]

    def joint_error(self, channels) -> float:
        """The joint dE / energy of removing the columns S of `channels` at once, trace(M_S [(H^-1)_SS]^-1
        M_S^T), the state left as it is (a group's last step, after which nothing is read)."""
        originals = self._originals(channels)
        if originals is None:
            return 0.0
        cols = self.place[originals]
        weights = self.columns_major[cols]                                           # M_S^T: [s, outputs]
        error = float((weights * solve(self._block(cols), weights)).sum()) / self.energy
        return max(error, 0.0)

    def _originals(self, channels) -> torch.Tensor | None:
        """The layer's original columns of `channels` (None when the layer reads none of them)."""
        originals = [self.columns[c] for c in channels if c in self.columns and self.columns[c].numel()]
        return torch.cat(originals) if originals else None

    def remove(self, channels, alive: np.ndarray) -> torch.Tensor | float:
        """The OBS step for the columns S of `channels` at once: M -= M_S [(H^-1)_SS]^-1 (H^-1)_S: (the
        optimal update of the other columns), H^-1 -= (H^-1)_:S [(H^-1)_SS]^-1 (H^-1)_S: (the inverse of H
        without S). `alive`: the group's channels left once these are gone. Returns their joint dE / energy, on
        the device (`eliminate` reads a step's sum once). Whether (H^-1)_SS factored is not read here but kept in
        `factored` (eliminate reads it once a group is done): a principal block of a positive definite inverse
        always does, and on a GPU a read per removal would wait on the device's queue (thousands in a ResNet-50)."""
        originals = self._originals(channels)
        if originals is None:
            return 0.0
        cols = self.place[originals]
        rows = self._rows(cols)                                                      # [s, columns]
        weights = self.columns_major[cols]                                           # M_S^T: [s, outputs]
        # one factorisation of (H^-1)_SS for both right-hand sides: [(H^-1)_SS]^-1 [M_S^T | (H^-1)_S:]
        both, factored = solve_unchecked(rows[:, cols], torch.cat([weights, rows], dim=1))
        self.factored = factored if self.factored is None else self.factored & factored  # read once (eliminate)
        error = (weights * both[:, :weights.shape[1]]).sum() / self.energy
        solved = both[:, weights.shape[1]:]                                          # [(H^-1)_SS]^-1 (H^-1)_S:
        self.columns_major.addmm_(solved.t(), weights, alpha=-1)                     # M^T -= solved^T M_S^T
        self.place[originals] = -1
        left, right = rows.t(), solved.t()  # the downdate left @ right^T, [columns, s] each
        self._downdate_blocks(left, right, alive)
        self._defer(left, right)
        return error.clamp_min(0.0)

    def _rows(self, cols: torch.Tensor) -> torch.Tensor:
        """Rows `cols` of the current inverse (stale entries in removed columns, never read)."""
        rows = self.base[cols]
        if self.used:
            rows -= self.left[cols, :self.used] @ self.right[:, :self.used].t()
        return rows

    def _block(self, cols: torch.Tensor) -> torch.Tensor:
        """The block (H^-1)_SS of the current inverse for the columns `cols`."""
        block = self.base[cols[:, None], cols]
        if self.used:
            block -= self.left[cols, :self.used] @ self.right[cols, :self.used].t()
        return block

    def _downdate_blocks(self, left: torch.Tensor, right: torch.Tensor, alive: np.ndarray) -> None:
        for channels, index, blocks in self.buckets:
            rows = np.flatnonzero(alive[channels])  # the host's mask: one on the device would be a read of it
            if rows.size:
                kept = _on(index.device, rows)
                at = self.place[index[kept]]                                         # [n, s]
                blocks[kept] -= left[at] @ right[at].transpose(1, 2)

    def _defer(self, left: torch.Tensor, right: torch.Tensor) -> None:
        width = left.shape[1]
        if self.left is None:
            self._buffers(self.base.shape[0], width)
        if self.used + width <= self.left.shape[1]:
            self.left[:, self.used:self.used + width] = left
            self.right[:, self.used:self.used + width] = right
            self.used += width
            return
        self._flush(left, right)

    def _flush(self, left: torch.Tensor, right: torch.Tensor) -> None:
        """Apply the deferred downdates and `left` @ `right`^T to `base` restricted to the columns still
        alive (a copy: `base` may be shared), and start empty buffers."""
        pending = [(self.left[:, :self.used], self.right[:, :self.used]), (left, right)]
        kept = self._compact()
        for deferred_left, deferred_right in pending:  # each H^-1_:S [(H^-1)_SS]^-1 H^-1_S:, symmetric
            if deferred_left.shape[1]:
                add_upper(self.base, deferred_left[kept], deferred_right[kept], alpha=-1)
        mirror_upper(self.base)
        self._buffers(kept.numel(), left.shape[1])
        self.used = 0
        release_freed_memory()  # the old base, factor and buffers: or the next layer's copies land beside them

    def _buffers(self, columns: int, width: int) -> None:
        """Empty deferred-downdate buffers for `columns` alive, at most a quarter of them wide (at least
        `width`): a ViT-L's residual stream keeps 49 layers of 1024 columns in one group, and buffers as
        wide as CAPACITY would take as much memory as their inverses."""
        self.left = self.base.new_empty((columns, max(min(self.CAPACITY, columns // 4), width)))
        self.right = torch.empty_like(self.left)

    def _compact(self) -> torch.Tensor:
        """Restrict `base` and `columns_major` to the columns alive (copies), renumber `place`; the positions kept."""
        kept = self.place[self.place >= 0].sort().values
        if self.owned and self.base.is_contiguous():
            self.base = _compact_in_place(self.base, kept)
        else:
            self.base, self.owned = self.base[kept[:, None], kept], True
        self.columns_major = self.columns_major[kept]
        renumber = torch.full((self.place.numel(),), -1, dtype=torch.long, device=kept.device)
        renumber[kept] = torch.arange(kept.numel(), device=kept.device)
        self.place = torch.where(self.place >= 0, renumber[self.place.clamp_min(0)], self.place)
        return kept


class UncompensatedState:
    """A layer with fewer calibration rows than columns, in an elimination: the least-squares compensation of its
    other columns would reproduce its outputs on those rows exactly, however many channels went, so its OBS error
    there says nothing of other inputs (ImageNet MobileNetV2's classifier, after global pooling: one row per
    image). Such a layer charges a channel its error with no compensation, trace(M_c H_cc M_c^T) / energy, which
    no fit can shrink; the errors of a step's channels add up (their cross terms left out)."""

    def __init__(self, matrix: torch.Tensor, gram_blocks, energy: float, columns: dict[int, torch.Tensor]):
        """`gram_blocks(index)`: H's diagonal blocks [n, s, s] for the columns of index [n, s] (from H, or from
        the kept rows). Channels with as many columns are scored in one batch and read back once: on cuda a
        read per channel would wait on the device a thousand times for a classifier's input."""
        channels, values = [], []
        for bucket, index in _buckets(columns):
            weights = matrix[:, index]                                               # [outputs, n, s]
            products = torch.einsum("oni,onj->nij", weights, weights)               # M_c^T M_c per channel
            values.append((gram_blocks(index) * products).sum(dim=(1, 2)))
            channels.append(bucket)
        self.channels = np.concatenate(channels) if channels else np.zeros(0, dtype=np.int64)
        self.values = np.zeros(0) if not values else np.maximum(torch.cat(values).cpu().numpy(), 0.0) / energy

    factored = None  # it solves nothing

    def error_terms(self, alive: np.ndarray) -> list[ErrorTerm]:
        keep = alive[self.channels]
        return [ErrorTerm(self.channels[keep], None, self.values[keep])] if keep.any() else []

    def joint_error(self, channels) -> float:
        return float(self.values[np.isin(self.channels, list(channels))].sum())

    def remove(self, channels, alive: np.ndarray | None = None) -> float:
        return self.joint_error(channels)


@dataclass
class ErrorTerm:
    """The errors of removing `channels` one at a time from one layer: `values` dE on the device, divided by
    `energy` once read (None: values already divided, on the host); where `usable` (a 0-d tensor) reads False, the
    values are those of `exact()` (a block that is not positive definite: the slower solve)."""

    channels: np.ndarray
    energy: float | None
    values: torch.Tensor | np.ndarray
    usable: torch.Tensor | None = None
    exact: Callable[[], torch.Tensor] | None = None


def _on(device: torch.device, rows: np.ndarray) -> torch.Tensor:
    """Host row numbers as an index on `device`, copied without waiting for the device's queue."""
    return torch.from_numpy(rows).to(device, non_blocking=True)


def _buckets(columns: dict[int, torch.Tensor]) -> list[tuple[np.ndarray, torch.Tensor]]:
    """The channels that read columns, grouped by how many: (their indices, their columns as one [n, s] index)."""
    by_size: dict[int, list[int]] = defaultdict(list)
    for channel, cols in columns.items():
        if cols.numel():
            by_size[int(cols.numel())].append(channel)
    return [(np.array(channels, dtype=np.int64), torch.stack([columns[c] for c in channels]))
            for channels in by_size.values()]


def _column_factor(matrix: torch.Tensor) -> torch.Tensor:
    """M^T (a copy) [columns, outputs]; where M has at least twice as many outputs as columns (a ViT's
    qkv and MLP input layers), a factor F [columns, columns] with F F^T = M^T M instead. All the
    elimination reads of M is M^T M: its errors trace(M_S B^-1 M_S^T) = trace(B^-1 (M^T M)_SS) and its
    updates act on M from the right, so F stands for M in a fraction of the memory and of the products."""
    outputs, columns = matrix.shape
    if outputs >= 2 * columns:  # M^T M from its upper blocks: symmetric, half the product
        factor, info = torch.linalg.cholesky_ex(mirror_upper(add_upper_gram(None, matrix)))
        if int(info) == 0:
            return factor
    return matrix.t().clone(memory_format=torch.contiguous_format)


def _compact_in_place(square: torch.Tensor, kept: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """square[kept][:, kept], written over the start of square's own storage (contiguous) a chunk of rows
    at a time, so that the largest inverses are never held twice. Safe since kept is increasing: the
    rows chunk i reads start at kept[i * chunk] * n >= i * chunk * n, past all that chunks 0..i-1 wrote
    (i * chunk * k, k <= n)."""
    size = kept.numel()
    flat = square.view(-1)
    for start in range(0, size, chunk):
        rows = square.index_select(0, kept[start:start + chunk]).index_select(1, kept)  # two gathers, no mask copy
        flat[start * size:start * size + rows.numel()] = rows.reshape(-1)
    return flat[:size * size].view(size, size)
