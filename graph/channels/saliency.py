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

Cost: the Hessians come from layer_hessians.iter_hessians (remove_channels shares them with `compensate`,
so obs + compensate gathers them once, in one staged pass over the calibration data, with each layer's
output energy, and holds them packed in between), one Cholesky inverse per distinct layer input (by the Woodbury identity when the calibration
rows are far fewer than the columns), and per group of C channels a number of elimination steps
(obs_elimination.eliminate): exact, about 32 ln(C / 64) + 64; fast (the default), about 8 ln(C / F) + 1
where F is the smallest width any plan leaves the group, since the order beyond it decides nothing.
Each step takes one batched s x s inverse per (layer, remaining channel) (s = a channel's columns: 9 for
a 3x3 conv). A layer's state holds only the group's block of its inverse (G columns;
shared with the other groups until the first downdate), whose downdates are deferred and applied 512
columns at a time: G^3 / 3 multiply-adds per group and layer, at matrix-product speed. A group is
eliminated as soon as its last layer's Hessian is in. The last result is kept under a digest of the
model and data (obs_saliency), so that a budget search's later candidates skip all of this.
Everything is float64, the products X^T X included: with them in float32 (twice as fast), ViT-Tiny's
elimination order moved and one MLP kept other channels, the float32 rounding of a rank-deficient H
being large against the damping in its null space. (U-Net MobileNetV2 at 64 px, 2 cores: 240 s
instead of 670 s, most of it the Cholesky inverse of the first decoder conv's 12,384 columns.)
"""

from __future__ import annotations

import copy
import hashlib
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils._pytree import tree_flatten

from prunefx.graph.channels.compensation import energy_key, output_energy
from prunefx.graph.channels.factor_slices import FactorSlices
from prunefx.graph.channels.groups import Combing
from prunefx.graph.channels.obs_elimination import LayerState, eliminate, lean_damped_inverse
from prunefx.graph.layer_hessians import iter_hessians
from prunefx.graph.layer_inputs import InputSpec, LayerInput, layer_inputs, weight_matrix


@dataclass
class Saliency:
    scores: list[np.ndarray]   # one array per group, aligned with group.classes
    read: list[np.ndarray]     # per group and channel: whether a usable layer reads it
    layers: int                # layers whose Hessian was used


def obs_saliency(module: torch.fx.GraphModule, combing: Combing, batches, *, damping: float = 0.01,
                 hessians: dict | None = None, steps: str = "fast", removable: list[int] | None = None) -> Saliency:
    """The OBS saliency of every channel of every group on the calibration `batches` (input tuples):
    the cumulative relative output error of the greedy, correlation-aware elimination of the group.
    `hessians`: a cache to share the layer Hessians with the compensation (see iter_hessians).
    `steps` and `removable` (per group, how many channels any plan may remove): obs_elimination.eliminate's.

    The last result is kept, keyed by a digest of everything it depends on (the graph, every tensor of
    the module, the channel groups, the batches and the damping): a budget search prunes the same dense
    model at one fraction after another, and its scores do not depend on the fraction."""
    key = _fingerprint(module, combing, batches, (damping, steps, removable))
    if key in _LAST:
        return copy.deepcopy(_LAST[key])
    saliency = _compute(module, combing, batches, damping, hessians, (steps, removable))
    _LAST.clear()
    _LAST[key] = copy.deepcopy(saliency)  # callers may replace scores (the l2 fallback): a copy is kept
    return saliency


_LAST: dict[str, Saliency] = {}  # at most one entry: fingerprint -> the saliency it produced


def _fingerprint(module: torch.fx.GraphModule, combing: Combing, batches, options: tuple) -> str:
    """A digest of the graph, every tensor the module holds (parameters, buffers, constants read by
    get_attr), the groups' channel classes, the batches and the `options` (damping and elimination steps)."""
    digest = hashlib.blake2b(digest_size=32)
    digest.update(module.code.encode())
    digest.update(repr(options).encode())
    tensors: dict[str, torch.Tensor] = dict(module.named_parameters(remove_duplicate=False))
    tensors.update(module.named_buffers(remove_duplicate=False))
    for node in module.graph.nodes:
        if node.op == "get_attr" and node.target not in tensors:
            value = _attribute(module, str(node.target))
            if isinstance(value, torch.Tensor):
                tensors[str(node.target)] = value
    for name in sorted(tensors):
        digest.update(name.encode())
        _update(digest, tensors[name])
    digest.update(np.ascontiguousarray(combing.analysis.classes).tobytes())
    for group in combing.groups:
        digest.update(b"group")
        digest.update(np.ascontiguousarray(group.classes).tobytes())
    for batch in batches:
        leaves, structure = tree_flatten(batch)
        digest.update(f"batch{structure}".encode())
        for item in leaves:
            if isinstance(item, torch.Tensor):
                _update(digest, item)
            else:
                digest.update(repr(item).encode())
    return digest.hexdigest()


def _attribute(module: torch.nn.Module, target: str) -> object:
    value: object = module
    for part in target.split("."):
        value = getattr(value, part, None)
    return value


def _update(digest, tensor: torch.Tensor) -> None:
    """Add a tensor's dtype, shape and bytes (read in place when contiguous on the CPU)."""
    tensor = tensor.detach()
    digest.update(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
    if tensor.numel():
        digest.update(tensor.cpu().contiguous().reshape(-1).view(torch.uint8).numpy())


def _compute(module: torch.fx.GraphModule, combing: Combing, batches, damping: float,
             hessians: dict | None, elimination: tuple) -> Saliency:
    steps, removable = elimination
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
    waiting: dict[int, int] = defaultdict(int)  # group -> (layer, group) states still to come
    for spec in needed:
        for _, positions in by_spec[spec]:
            for group in {g for g, _ in positions} & complete:
                waiting[group] += 1
    states: dict[int, list[LayerState]] = defaultdict(list)
    scores = [np.zeros(group.size) for group in combing.groups]
    layers = 0
    for spec, hessian, rows in iter_hessians(module, needed, batches, cache=hessians, from_rows=True):
        inverse = lean_damped_inverse(hessian, damping, rows)
        device = (rows.kept if hessian is None else hessian).device
        for layer, positions in by_spec[spec]:
            layers += 1
            matrix = weight_matrix(module, layer.weight, transposed=layer.transposed).to(device)
            energy = output_energy(matrix, hessian, rows)
            if hessians is not None:
                hessians[energy_key(layer.weight)] = energy
            by_group: dict[int, dict[int, torch.Tensor]] = defaultdict(dict)
            for group, index in positions:
                if group in complete:
                    cols = np.flatnonzero(layer.columns(blocks[(group, index)]))
                    by_group[group][index] = torch.from_numpy(cols).to(device)
            for group, columns in by_group.items():
                # zero input or zero weights: removing anything costs nothing, the layer is left out
                if inverse is not None and energy > 0:
                    states[group].append(LayerState(matrix, inverse, energy, columns))  # it keeps a copy
                waiting[group] -= 1
        sharing = [state for found in states.values() for state in found if state.base is inverse]
        if len(sharing) == 1:
            sharing[0].owned = True  # its downdates may overwrite the inverse: no copy of it is made
        del hessian, inverse, sharing  # held by the states that share it, until their first downdate
        for group in [g for g in states if waiting[g] == 0]:
            scores[group] = eliminate(combing.groups[group].size, states.pop(group), steps=steps,
                                      removable=None if removable is None else removable[group])
    return Saliency(scores, read, layers)


def _channel_blocks(combing: Combing) -> dict[tuple[int, int], np.ndarray]:
    """(group, index) -> the classes that go when that channel goes (itself, and for a grid factor
    every class of its slice of the grid)."""
    slices = FactorSlices(combing.analysis)
    blocks = {}
    for group_index, group in enumerate(combing.groups):
        for index, cls in enumerate(group.classes.tolist()):
            if cls in slices.slices:
                blocks[(group_index, index)] = slices.removed_with(cls)
            else:
                blocks[(group_index, index)] = np.array([cls])
    return blocks
