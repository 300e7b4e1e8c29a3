"""The `obs` channel importance: second-order (Optimal Brain Surgeon) scores, i.e. the layer output
error that removing channels causes *after* the optimal compensation of the remaining inputs.

One channel. Write a layer that reads channels as Y = X M^T (graph/channel_compensation.py: M
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
Cholesky inverse per distinct layer input, and per group of C channels C elimination steps, each with
one batched s x s solve per (layer, remaining channel) (s = a channel's columns: 9 for a 3x3 conv)
and a downdate of each reading layer's inverse (columns^2 x s).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import torch

from prunefx.graph.channel_compensation import damped_inverse, output_energy
from prunefx.graph.channel_groups import Combing
from prunefx.graph.channel_removal import expand_mask
from prunefx.graph.layer_inputs import InputSpec, LayerInput, iter_hessians, layer_inputs, weight_matrix


@dataclass
class Saliency:
    scores: list[np.ndarray]   # one array per group, aligned with group.classes
    read: list[np.ndarray]     # per group and channel: whether a usable layer reads it
    layers: int                # layers whose Hessian was used


class _Layer:
    """One layer's state during the elimination of one group: its weight matrix (updated by every
    removal, as compensation would), the inverse of its damped Hessian restricted to the columns not
    yet removed, its output energy, and the columns of each channel it reads. Removed columns are
    zeroed, and dropped from the matrices once a quarter of them is (the downdates then get cheaper
    as the group shrinks)."""

    def __init__(self, matrix: torch.Tensor, inverse: torch.Tensor, energy: float,
                 columns: dict[int, torch.Tensor]):
        self.matrix, self.inverse, self.energy = matrix, inverse, energy
        self.columns = columns  # channel index in the group -> its original columns in this layer
        self.place = torch.arange(matrix.shape[1], device=matrix.device)  # original column -> current, -1: gone
        self.zeroed = 0  # columns zeroed but not dropped yet
        by_size: dict[int, list[int]] = defaultdict(list)
        for channel, cols in columns.items():
            if cols.numel():
                by_size[int(cols.numel())].append(channel)
        # channels with as many columns, and their columns as one [channels, s] index: solved in one batch
        self.buckets = [(np.array(channels), torch.stack([columns[c] for c in channels]))
                        for channels in by_size.values()]

    def add_errors(self, errors: np.ndarray, alive: np.ndarray) -> None:
        """Add dE / energy of removing each alive channel (alone) from the current state to `errors`."""
        for channels, index in self.buckets:
            keep = alive[channels]
            if not keep.any():
                continue
            index = self.place[index[torch.from_numpy(keep).to(index.device)]]     # [n, s]
            block = self.inverse[index[:, :, None], index[:, None, :]]              # [n, s, s]
            weights = self.matrix[:, index].permute(1, 2, 0)                        # [n, s, outputs]
            values = (weights * _solve(block, weights)).sum(dim=(1, 2)).cpu().numpy()
            errors[channels[keep]] += np.maximum(values, 0.0) / self.energy

    def remove(self, channels) -> float:
        """The OBS step for the columns S of `channels` at once: M -= M_S [(H^-1)_SS]^-1 (H^-1)_S: (the
        optimal update of the other columns), H^-1 -= (H^-1)_:S [(H^-1)_SS]^-1 (H^-1)_S: (the inverse of H
        without S). Returns their joint dE / energy."""
        originals = [self.columns[c] for c in channels if c in self.columns and self.columns[c].numel()]
        if not originals:
            return 0.0
        cols = self.place[torch.cat(originals)]
        rows = self.inverse[cols]                                                    # [s, columns]
        weights = self.matrix[:, cols]                                               # [outputs, s]
        error = float((weights.t() * _solve(rows[:, cols], weights.t())).sum()) / self.energy
        solved = _solve(rows[:, cols], rows)                                         # [(H^-1)_SS]^-1 (H^-1)_S:
        self.matrix -= weights @ solved
        self.inverse -= rows.t() @ solved
        self.matrix[:, cols] = 0
        self.inverse[cols] = 0
        self.inverse[:, cols] = 0
        self.place[torch.cat(originals)] = -1
        self.zeroed += int(cols.numel())
        if 4 * self.zeroed >= self.matrix.shape[1]:
            self._drop_zeroed()
        return max(error, 0.0)

    def _drop_zeroed(self) -> None:
        kept = torch.zeros(self.matrix.shape[1], dtype=torch.bool, device=self.matrix.device)
        kept[self.place[self.place >= 0]] = True
        self.matrix = self.matrix[:, kept]
        self.inverse = self.inverse[kept][:, kept]
        renumber = torch.cumsum(kept.long(), 0) - 1
        self.place = torch.where(self.place >= 0, renumber[self.place.clamp_min(0)], self.place)
        self.zeroed = 0


def _solve(block: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    solved, info = torch.linalg.solve_ex(block, right)
    if bool((info != 0).any()):
        return torch.linalg.lstsq(block, right).solution
    return solved


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
    # Per group, the layers that read it: (matrix, inverse, energy, columns of each channel); one inverse
    # per layer input, copied only while its group is eliminated.
    states: dict[int, list[tuple]] = defaultdict(list)
    layers = 0
    needed = [spec for spec, found in by_spec.items() if any(g in complete for _, ps in found for g, _ in ps)]
    for spec, hessian, _ in iter_hessians(module, needed, batches, cache=hessians):
        inverse = damped_inverse(hessian, damping)
        for layer, positions in by_spec[spec]:
            layers += 1
            matrix = weight_matrix(module, layer.weight, transposed=layer.transposed).to(hessian.device)
            energy = output_energy(matrix, hessian)
            if inverse is None or energy <= 0:  # zero input or zero weights: removing anything costs nothing
                continue
            by_group: dict[int, dict[int, torch.Tensor]] = defaultdict(dict)
            for group, index in positions:
                cols = np.flatnonzero(layer.columns(blocks[(group, index)]))
                by_group[group][index] = torch.from_numpy(cols).to(hessian.device)
            for group, columns in by_group.items():
                if group in complete:
                    states[group].append((matrix, inverse, energy, columns))
        del hessian
    scores = [np.zeros(group.size) for group in combing.groups]
    for group in complete:
        layers_of_group = [_Layer(matrix.clone(), inverse.clone(), energy, columns)
                           for matrix, inverse, energy, columns in states.pop(group, [])]
        scores[group] = _eliminate(combing.groups[group].size, layers_of_group)
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
