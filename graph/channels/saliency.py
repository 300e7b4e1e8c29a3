"""The `obs` channel importance: second-order (Optimal Brain Surgeon) scores, i.e. the layer output
error that removing channels causes *after* the optimal compensation of the remaining inputs.

One channel. Write a layer that reads channels as Y = X M^T (graph/channels/compensation.py: M
[outputs x columns] its weight as a matrix, X its input over the calibration data, a convolution
unfolded so that one input channel owns its k x k columns) and H = X^T X + lam I its damped layer-input
Hessian (lam = damping * mean(diag H), remove_channels' `damping`, 0.01 by default: the H the
compensation uses). Removing the columns S of one channel and updating the other columns as
`compensate` does (M_K += M_S H_SK H_KK^-1) leaves the output error

    dE_S = trace( M_S [(H^-1)_SS]^-1 M_S^T )

the OBS formula for removing a block of weights, applied to every output row at once (the rows share
H). Without compensation it would be trace(M_S H_SS M_S^T): dE_S leaves out the part of the channel the
kept ones reproduce, so a channel that is a linear combination of others costs ~0 however large its
weights, and a weak but unique one costs what it carries.

Normalisation. dE is divided by the layer's output energy trace(M H M^T) (H undamped): the relative
output error of the layer, what `compensate` reports per layer (`error_with`). Absolute errors are in
units of each layer's squared output, which differ by orders of magnitude between layers (activation
scales, weight decay, batch-norm gammas), while the batch norm or non-linearity after a layer works on
its output's own scale. Unnormalised, the layer with the largest activations would decide the score of
a coupled channel (a residual stream read by every block) and the ranking across groups; relative
errors are invariant to rescaling a layer's input or weights, so they add up across the layers that
read a channel and compare across groups.

Many channels: correlation-aware elimination (CAP's, per group of channels). Single-channel scores
miss what removals do together (two copies of a channel each cost ~0 alone; removing both loses it).
So every group is eliminated greedily: remove the channel whose dE, summed over every layer that
reads it, is smallest; apply the OBS step to those layers (their other columns absorb it as the
compensation would, and their inverse Hessians are downdated to the remaining columns:
H^-1 -= (H^-1)_:S [(H^-1)_SS]^-1 (H^-1)_S:); repeat with the updated layers. A channel's score is the
total relative error of the group once it is gone (the sum of the increments so far): higher = more
important, rising in elimination order, so the selector's "lowest scores go first" follows the
elimination. Being relative errors, scores of different groups share a scale (`comparable`): the
global ranking uses one error threshold across all groups, as CAP allocates sparsity, instead of
normalising each group by its mean. (ResNet-20 trained on Fashion-MNIST (92.9 %) pruned to half its
MACs with `compensate` and recalibrated batch norms: relative logits error on held-out images 0.047
with l2, 0.023 with this elimination. On an earlier checkpoint, single-channel scores did worse than
l2, 0.046 against 0.039, where the elimination did better, 0.023.)

Scope. A grid factor (an attention head) is scored as the block of every column it controls. Layers
whose weights cannot be updated (grouped and depthwise convolutions, shared weights; see
layer_inputs.layer_inputs) contribute nothing: a depthwise conv couples its input and output
channels, so the channel is scored by the layers that read the depthwise output. A group with a
channel that no usable layer reads is scored by `l2` instead (two criteria's scores cannot be mixed in
one group; `fallback_groups` and `fallback_channels` count them, as for `bn`), and then the global
ranking normalises every group by its mean, as for the other criteria. A layer reading several groups
(a concat) is eliminated against each group separately, the other groups' columns kept.

Cost: the Hessians come from layer_inputs.iter_hessians (one pass over the calibration data
per chunk; remove_channels shares them with `compensate`, so obs + compensate gathers them once), one
Cholesky inverse per distinct layer input, and per group of C channels about 32 ln(C / 64) + 64
elimination steps, each with one batched s x s solve per (layer, remaining channel) (s = a channel's
columns: 9 for a 3x3 conv). A layer's state holds only the group's block of its inverse (G columns;
shared with the other groups until the first downdate), whose downdates are deferred and applied 512
columns at a time: G^3 / 3 multiply-adds per group and layer, at matrix-product speed. A group is
eliminated as soon as its last layer's Hessian is in. (U-Net MobileNetV2 at 64 px, 2 cores: 240 s
instead of 670 s, most of it the Cholesky inverse of the first decoder conv's 12,384 columns.)
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import torch

from prunefx.graph.channels.compensation import damped_inverse, damping_term, output_energy
from prunefx.graph.channels.groups import Combing
from prunefx.graph.channels.removal import expand_mask
from prunefx.graph.layer_inputs import InputSpec, LayerInput, iter_hessians, layer_inputs, weight_matrix


@dataclass
class Saliency:
    scores: list[np.ndarray]   # one array per group, aligned with group.classes
    read: list[np.ndarray]     # per group and channel: whether a usable layer reads it
    layers: int                # layers whose Hessian was used


class _Layer:
    """One layer's state during the elimination of one group, restricted to the group's columns (the
    elimination never reads another column: a channel's dE needs its own block of H^-1 and its own
    weights, and the downdate of the group's block of H^-1 needs only that block, a Schur complement):

    - `matrix`, its weights, updated by every removal as compensation would (a copy);
    - `base` and the deferred downdates `left` @ `right`^T: the inverse of the damped Hessian restricted
      to the columns not yet removed is base - left[:, :used] @ right[:, :used]^T. `base` starts as the
      layer's full inverse, shared with the other groups that read the layer and never written: the
      downdates (rank s per removed channel) are applied in one product once `used` reaches the
      buffers' capacity, which also drops the removed and the other groups' columns. A rank-9 update of
      a 10k x 10k matrix per step is bound by memory traffic; a rank-512 one by arithmetic.
    - `blocks`: per bucket of channels with as many columns, their diagonal blocks of the current
      inverse [channels, s, s], downdated at every removal (all that the errors need);
    - `place`: layer column -> its row in `base` and column in `matrix`, -1 once removed (or not in
      the group)."""

    CAPACITY = 512  # deferred columns before the downdates are applied to `base`

    def __init__(self, matrix: torch.Tensor, inverse: torch.Tensor, energy: float,
                 columns: dict[int, torch.Tensor]):
        self.matrix, self.base, self.energy = matrix, inverse, energy
        self.owned = False  # whether `base` is this state's alone (then compacted in place)
        self.columns = columns  # channel index in the group -> its original columns in this layer
        device = matrix.device
        self.place = torch.full((matrix.shape[1],), -1, dtype=torch.long, device=device)
        for cols in columns.values():
            self.place[cols] = cols
        if 2 * int((self.place >= 0).sum()) <= self.place.numel():
            self._compact()  # a small slice of a wide layer (a skip connection's share of a concat): copy it
        self.used, self.left, self.right = 0, None, None
        by_size: dict[int, list[int]] = defaultdict(list)
        for channel, cols in columns.items():
            if cols.numel():
                by_size[int(cols.numel())].append(channel)
        # channels with as many columns, their columns as one [channels, s] index (solved in one batch),
        # and their diagonal blocks of the inverse
        self.buckets = []
        for channels in by_size.values():
            index = torch.stack([columns[c] for c in channels])
            at = self.place[index]
            self.buckets.append((np.array(channels), index, self.base[at[:, :, None], at[:, None, :]]))

    def add_errors(self, errors: np.ndarray, alive: np.ndarray) -> None:
        """Add dE / energy of removing each alive channel (alone) from the current state to `errors`."""
        for channels, index, blocks in self.buckets:
            keep = alive[channels]
            if not keep.any():
                continue
            keep_t = torch.from_numpy(keep).to(index.device)
            weights = self.matrix[:, self.place[index[keep_t]]].permute(1, 2, 0)    # [n, s, outputs]
            values = (weights * _solve(blocks[keep_t], weights)).sum(dim=(1, 2)).cpu().numpy()
            errors[channels[keep]] += np.maximum(values, 0.0) / self.energy

    def remove(self, channels) -> float:
        """The OBS step for the columns S of `channels` at once: M -= M_S [(H^-1)_SS]^-1 (H^-1)_S: (the
        optimal update of the other columns), H^-1 -= (H^-1)_:S [(H^-1)_SS]^-1 (H^-1)_S: (the inverse of H
        without S). Returns their joint dE / energy."""
        originals = [self.columns[c] for c in channels if c in self.columns and self.columns[c].numel()]
        if not originals:
            return 0.0
        originals = torch.cat(originals)
        cols = self.place[originals]
        rows = self._rows(cols)                                                      # [s, columns]
        weights = self.matrix[:, cols]                                               # [outputs, s]
        error = float((weights.t() * _solve(rows[:, cols], weights.t())).sum()) / self.energy
        solved = _solve(rows[:, cols], rows)                                         # [(H^-1)_SS]^-1 (H^-1)_S:
        self.matrix -= weights @ solved
        self.place[originals] = -1
        left, right = rows.t(), solved.t()  # the downdate left @ right^T, [columns, s] each
        self._downdate_blocks(left, right)
        self._defer(left, right)
        return max(error, 0.0)

    def _rows(self, cols: torch.Tensor) -> torch.Tensor:
        """Rows `cols` of the current inverse (stale entries in removed columns, never read)."""
        rows = self.base[cols]
        if self.used:
            rows -= self.left[cols, :self.used] @ self.right[:, :self.used].t()
        return rows

    def _downdate_blocks(self, left: torch.Tensor, right: torch.Tensor) -> None:
        for _, index, blocks in self.buckets:
            alive = (self.place[index[:, 0]] >= 0).nonzero().squeeze(1)
            if alive.numel():
                at = self.place[index[alive]]                                        # [n, s]
                blocks[alive] -= left[at] @ right[at].transpose(1, 2)

    def _defer(self, left: torch.Tensor, right: torch.Tensor) -> None:
        width = left.shape[1]
        if self.left is None:
            self.left = self.base.new_empty((self.base.shape[0], max(self.CAPACITY, width)))
            self.right = torch.empty_like(self.left)
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
        for deferred_left, deferred_right in pending:
            if deferred_left.shape[1]:
                self.base.addmm_(deferred_left[kept], deferred_right[kept].t(), alpha=-1)
        self.left = self.base.new_empty((kept.numel(), max(self.CAPACITY, left.shape[1])))
        self.right = torch.empty_like(self.left)
        self.used = 0

    def _compact(self) -> torch.Tensor:
        """Restrict `base` and `matrix` to the columns alive (copies), renumber `place`; the positions kept."""
        kept = self.place[self.place >= 0].sort().values
        if self.owned and self.base.is_contiguous():
            self.base = _compact_in_place(self.base, kept)
        else:
            self.base, self.owned = self.base[kept[:, None], kept], True
        self.matrix = self.matrix[:, kept]
        renumber = torch.full((self.place.numel(),), -1, dtype=torch.long, device=kept.device)
        renumber[kept] = torch.arange(kept.numel(), device=kept.device)
        self.place = torch.where(self.place >= 0, renumber[self.place.clamp_min(0)], self.place)
        return kept


def _compact_in_place(square: torch.Tensor, kept: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """square[kept][:, kept], written over the start of square's own storage (contiguous) a chunk of rows
    at a time, so that the largest inverses are never held twice. Safe since kept is increasing: the
    rows chunk i reads start at kept[i * chunk] * n >= i * chunk * n, past all that chunks 0..i-1 wrote
    (i * chunk * k, k <= n)."""
    size = kept.numel()
    flat = square.view(-1)
    for start in range(0, size, chunk):
        rows = square[kept[start:start + chunk]][:, kept]
        flat[start * size:start * size + rows.numel()] = rows.reshape(-1)
    return flat[:size * size].view(size, size)


def _solve(block: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    solved, info = torch.linalg.solve_ex(block, right)
    if bool((info != 0).any()):
        return torch.linalg.lstsq(block, right).solution
    return solved


def _damped_inverse(hessian: torch.Tensor, damping: float) -> torch.Tensor | None:
    """channel_compensation.damped_inverse's (H + lam I)^-1, bit for bit, in one working copy of H (the
    factor and the inverse overwrite it) instead of an identity, its multiple, their sum, the factor
    and the inverse: a U-Net decoder conv reading 12k columns has a 1.2 GB H in float64. Same jitters;
    its pinv fallback is left to it."""
    lam = damping_term(hessian, damping)
    if lam is None:
        return None
    scale = float(hessian.diagonal().mean())
    work, info = torch.empty_like(hessian), torch.empty((), dtype=torch.int32, device=hessian.device)
    for jitter in (0.0, 1e-10, 1e-8, 1e-6, 1e-4):
        work.copy_(hessian)
        work.diagonal().add_(lam + jitter * scale)
        torch.linalg.cholesky_ex(work, out=(work, info))
        if int(info) == 0:
            return torch.cholesky_inverse(work, out=work)
    del work
    return damped_inverse(hessian, damping)


def obs_saliency(module: torch.fx.GraphModule, combing: Combing, batches, *, damping: float = 0.01,
                 hessians: dict | None = None) -> Saliency:
    """The OBS saliency of every channel of every group on the calibration `batches` (input tuples):
    the cumulative relative output error of the greedy, correlation-aware elimination of the group.
    `hessians`: a cache to share the layer Hessians with the compensation (see iter_hessians)."""
    analysis = combing.analysis
    blocks = _channel_blocks(combing)
    readers: dict[int, list[tuple[int, int]]] = defaultdict(list)  # column class -> channels that remove it
    for position, classes in blocks.items():
        for cls in classes.tolist():
            readers[cls].append(position)
    read = [np.zeros(group.size, dtype=bool) for group in combing.groups]
    by_spec: dict[InputSpec, list[tuple[LayerInput, list]]] = defaultdict(list)
    for layer in layer_inputs(module, analysis):
        if layer.problem is not None:
            continue
        positions = list(dict.fromkeys(p for cls in np.unique(layer.column_classes).tolist()
                                       for p in readers.get(cls, ())))
        if positions:
            by_spec[layer.spec].append((layer, positions))
            for group, index in positions:
                read[group][index] = True
    complete = {group for group, flags in enumerate(read) if flags.all()}  # the others fall back to l2
    needed = [spec for spec, found in by_spec.items() if any(g in complete for _, ps in found for g, _ in ps)]
    # A group is eliminated as soon as the last layer that reads it is in, so that only the layers of
    # groups not finished yet are held (with a U-Net decoder's 12k-column inverses, gigabytes each).
    waiting = defaultdict(int)  # group -> (layer, group) states still to come
    for spec in needed:
        for _, positions in by_spec[spec]:
            for group in {g for g, _ in positions} & complete:
                waiting[group] += 1
    states: dict[int, list[_Layer]] = defaultdict(list)
    scores = [np.zeros(group.size) for group in combing.groups]
    layers = 0
    for spec, hessian, _ in iter_hessians(module, needed, batches, cache=hessians):
        inverse = _damped_inverse(hessian, damping)
        for layer, positions in by_spec[spec]:
            layers += 1
            matrix = weight_matrix(module, layer.weight, transposed=layer.transposed).to(hessian.device)
            energy = output_energy(matrix, hessian)
            by_group: dict[int, dict[int, torch.Tensor]] = defaultdict(dict)
            for group, index in positions:
                if group in complete:
                    cols = np.flatnonzero(layer.columns(blocks[(group, index)]))
                    by_group[group][index] = torch.from_numpy(cols).to(hessian.device)
            for group, columns in by_group.items():
                # zero input or zero weights: removing anything costs nothing, the layer is left out
                if inverse is not None and energy > 0:
                    states[group].append(_Layer(matrix.clone(), inverse, energy, columns))
                waiting[group] -= 1
        sharing = [state for found in states.values() for state in found if state.base is inverse]
        if len(sharing) == 1:
            sharing[0].owned = True  # its downdates may overwrite the inverse: no copy of it is made
        del hessian, inverse, sharing  # held by the states that share it, until their first downdate
        for group in [g for g in states if waiting[g] == 0]:
            scores[group] = _eliminate(combing.groups[group].size, states.pop(group))
    return Saliency(scores, read, layers)


def _eliminate(size: int, layers: list[_Layer]) -> np.ndarray:
    """Greedy elimination: remove the channels whose removal (with compensation) adds the least relative
    error over all `layers`, update the layers, repeat; a channel's score is the total error once it is
    gone, so scores rise in elimination order. One channel at a time while fewer than 64 are left,
    before that the alive // 32 cheapest at once (a 512-wide group in ~150 steps instead of 512): the
    last of such a batch scores the exact joint error, the others share the batch's increase in
    proportion to their single-channel errors."""
    scores = np.zeros(size)
    alive = np.ones(size, dtype=bool)
    total = 0.0
    while alive.any():
        errors = np.zeros(size)
        for layer in layers:
            layer.add_errors(errors, alive)
        errors[~alive] = np.inf
        chosen = np.argsort(errors, kind="stable")[:max(int(alive.sum()) // 32, 1)]
        increase = sum(layer.remove(chosen.tolist()) for layer in layers)
        single = errors[chosen]
        shares = np.cumsum(single) / single.sum() if single.sum() > 0 else np.arange(1, chosen.size + 1) / chosen.size
        scores[chosen] = total + increase * shares
        total += increase
        alive[chosen] = False
    return scores


def _channel_blocks(combing: Combing) -> dict[tuple[int, int], np.ndarray]:
    """(group, index) -> the classes that go when that channel goes (itself, and for a grid factor
    every class of its slice of the grid)."""
    analysis = combing.analysis
    factors = {int(c) for grid in analysis.space.grids for f in grid.factors for c in analysis.classes[f]}
    size = int(analysis.classes.max()) + 1
    blocks = {}
    for group_index, group in enumerate(combing.groups):
        for index, cls in enumerate(group.classes.tolist()):
            if cls in factors:
                mask = np.zeros(size, dtype=bool)
                mask[cls] = True
                blocks[(group_index, index)] = np.flatnonzero(expand_mask(analysis, mask))
            else:
                blocks[(group_index, index)] = np.array([cls])
    return blocks
