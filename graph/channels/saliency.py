"""The `obs` channel importance: second-order (Optimal Brain Surgeon) scores, i.e. the layer output
error that removing channels causes *after* the optimal compensation of the remaining inputs.

A channel costs the OBS error trace(M_S [(H^-1)_SS]^-1 M_S^T) of the layers that read it, divided by each
layer's output energy so that scores add across layers and compare across groups (`comparable`). Every group
is eliminated greedily (CAP's correlation-aware elimination, obs_elimination.py), a channel scored by the
group's total error once it is gone. Hessians are shared with `compensate`; the last result is cached per
model and data (obs_saliency), with its Hessians while a budget search runs (hessians_shared). The formulas,
the normalisation, the scope and the cost: see docs/algorithms.md, 'The obs importance'.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import dataclasses
import hashlib
import logging
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils._pytree import tree_flatten

from prunefx.graph.channels.compensation import energy_key, lean_damped_inverse, output_energy
from prunefx.graph.channels.groups import Combing
from prunefx.graph.channels.labels import distinct
from prunefx.graph.channels.obs_elimination import eliminate
from prunefx.graph.channels.obs_layer_state import LayerState, UncompensatedState
from prunefx.graph.fingerprint import graph_code
from prunefx.graph.heap import release_freed_memory
from prunefx.graph.host_to_device import on_device_at_once
from prunefx.graph.layer_hessians import iter_hessians
from prunefx.graph.layer_inputs import InputSpec, LayerInput, layer_inputs, weight_matrix
from prunefx.graph.part_seconds import PartSeconds
from prunefx.graph.placement import module_device
from prunefx.graph.progress import progress_bar

log = logging.getLogger(__name__)


@dataclass
class Saliency:
    scores: list[np.ndarray]   # one array per group, aligned with group.classes
    read: list[np.ndarray]     # per group and channel: whether a usable layer reads it
    layers: int                # layers whose Hessian was used
    seconds: dict[str, float] = field(default_factory=dict)  # Hessians, inverses, elimination (none when cached)
    # layers with fewer calibration rows than columns, scored without compensation: layer, rows, columns
    uncompensated: list[dict] = field(default_factory=list)


def obs_saliency(module: torch.fx.GraphModule, combing: Combing, batches, *, damping: float = 0.01,
                 hessians: dict | None = None, steps: str = "fast", removable: list[int] | None = None,
                 progress: bool | None = None) -> Saliency:
    """The OBS saliency of every channel of every group on the calibration `batches` (input tuples):
    the cumulative relative output error of the greedy, correlation-aware elimination of the group.
    `hessians`: a cache to share the layer Hessians with the compensation (see iter_hessians).
    `steps` and `removable` (per group, how many channels any plan may remove): obs_elimination.eliminate's.
    `progress`: a bar over the layers read (graph/progress.py; None: on a terminal).

    The last result is kept, keyed by a digest of everything it depends on (the graph, every tensor of
    the module, the channel groups, the batches and the damping): a budget search prunes the same dense
    model at one fraction after another, and its scores do not depend on the fraction."""
    key = _fingerprint(module, combing, batches, (damping, steps, removable))
    shared = _SHARED.get()
    if key in _LAST:
        if hessians is not None and shared is not None and key in shared:
            hessians.update(shared[key])  # the Hessians gathered with these scores, for the compensation
        return dataclasses.replace(copy.deepcopy(_LAST[key]), seconds={})  # nothing computed this time
    saliency = _compute(module, combing, batches, damping, hessians, (steps, removable), progress)
    _LAST.clear()
    _LAST[key] = copy.deepcopy(saliency)  # callers may replace scores (the l2 fallback): a copy is kept
    if hessians is not None and shared is not None:
        shared.clear()  # one model's at a time
        shared[key] = dict(hessians)  # its entries, not the dict: the compensation pops from the one it was given
    return saliency


_LAST: dict[str, Saliency] = {}  # at most one entry: fingerprint -> the saliency it produced
# inside hessians_shared(): fingerprint -> the Hessian cache its scores were computed with (one entry)
_SHARED: contextvars.ContextVar[dict | None] = contextvars.ContextVar("prunefx_shared_hessians", default=None)


@contextlib.contextmanager
def hessians_shared() -> Iterator[None]:
    """Within the block, the layer Hessians an `obs` scoring gathered stay beside its cached scores, and a later
    scoring of the same model and data hands them on with the scores: a budget search's every candidate is
    compensated from the Hessians of the same dense network, which it would otherwise gather again (a ViT-L's:
    about a minute on two cores). One model's at a time, dropped with the block: a ViT-L's are 0.95 GB, mostly
    in temporary files (graph/packed_hessian.py)."""
    token = _SHARED.set({})
    try:
        yield
    finally:
        _SHARED.reset(token)


def _fingerprint(module: torch.fx.GraphModule, combing: Combing, batches, options: tuple) -> str:
    """A digest of the graph, every tensor the module holds (parameters, buffers, constants read by
    get_attr), the groups' channel classes, the batches and the `options` (damping and elimination steps)."""
    digest = hashlib.blake2b(digest_size=32)
    digest.update(graph_code(module).encode())
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
             hessians: dict | None, elimination: tuple, progress: bool | None) -> Saliency:
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
        positions = list(dict.fromkeys(p for cls in distinct(layer.column_classes).tolist()
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
    layers, uncompensated = 0, {}
    total = sum(len(by_spec[spec]) for spec in needed)
    parts = PartSeconds(module_device(module))
    gathered = iter_hessians(module, needed, batches, cache=hessians, from_rows=True)
    with progress_bar("scoring channels (obs)", total, unit="layer", progress=progress) as bar:
        while True:
            with parts.part("Hessians"):  # the forward passes and X^T X run inside the generator
                item = next(gathered, None)
            if item is None:
                break
            spec, hessian, rows = item
            del item  # H is freed with the names below, before the next layer's is gathered
            gathered_as = rows.kept if hessian is None else hessian
            device = gathered_as.device
            # fewer rows than columns: a compensation would fit them exactly (UncompensatedState)
            columns_read = gathered_as.shape[1]
            fitted_exactly = rows.count < columns_read
            del gathered_as
            with parts.part("inverses"):
                matrices, energies = [], []
                for layer, _ in by_spec[spec]:
                    matrices.append(weight_matrix(module, layer.weight, transposed=layer.transposed).to(device))
                    energies.append(output_energy(matrices[-1], hessian, rows))
                gram_blocks = _gram_blocks(hessian, rows) if fitted_exactly else None
                # H is read no more: its inverse is written over it (H and a copy of a ViT-L MLP's: 268 MB)
                inverse = None if fitted_exactly else lean_damped_inverse(hessian, damping, rows, overwrite=True)
            with parts.part("elimination"):
                for (layer, positions), matrix, energy in zip(by_spec[spec], matrices, energies):
                    layers += 1
                    if hessians is not None:
                        hessians[energy_key(layer.weight)] = energy
                    wanted = [(group, index) for group, index in positions if group in complete]
                    columns_of = on_device_at_once([layer.column_indices(blocks[at]) for at in wanted], device)
                    by_group: dict[int, dict[int, torch.Tensor]] = defaultdict(dict)
                    for (group, index), cols in zip(wanted, columns_of):
                        by_group[group][index] = cols
                    for group, columns in by_group.items():
                        # zero input or zero weights: removing anything costs nothing, the layer is left out
                        if fitted_exactly and energy > 0:
                            states[group].append(UncompensatedState(matrix, gram_blocks, energy, columns))
                            uncompensated[layer.weight] = {"layer": layer.weight, "rows": int(rows.count),
                                                           "columns": columns_read}
                        elif inverse is not None and energy > 0:
                            states[group].append(LayerState(matrix, inverse, energy, columns))  # it keeps a copy
                        waiting[group] -= 1
                sharing = [state for found in states.values() for state in found
                           if inverse is not None and getattr(state, "base", None) is inverse]
                if len(sharing) == 1:
                    sharing[0].owned = True  # its downdates may overwrite the inverse: no copy of it is made
                del hessian, inverse, sharing, matrices, gram_blocks  # held by the states sharing it, until their first downdate
                for group in [g for g in states if waiting[g] == 0]:
                    eliminated = eliminate(combing.groups[group].size, states.pop(group), steps=steps,
                                           removable=None if removable is None else removable[group])
                    if eliminated is None:  # a singular block: the group is scored as one no layer reads
                        found = combing.groups[group]
                        log.warning("obs: a block of an inverse Hessian did not factor in the elimination of the "
                                    "%d channels of %s (group %d); they are scored by l2", found.size,
                                    found.members[0][0], group)
                        read[group][:] = False
                    else:
                        scores[group] = eliminated
            # the layer's Hessian, inverse and finished groups' states are freed: their pages go back to the
            # system, or the next layer's buffers land beside them and the peak grows with every layer
            release_freed_memory()
            bar.update(len(by_spec[spec]))
    return Saliency(scores, read, layers, parts.seconds, list(uncompensated.values()))


def _gram_blocks(hessian: torch.Tensor | None, rows):
    """index [n, s] -> H's diagonal blocks [n, s, s] on those columns, from H or, where it was not formed, from
    the kept calibration rows."""
    if hessian is not None:
        return lambda index: hessian[index[:, :, None], index[:, None, :]]
    kept = rows.kept

    def from_rows(index: torch.Tensor) -> torch.Tensor:
        gathered = kept[:, index]  # [rows, n, s], gathered once for both sides of X_c^T X_c
        return torch.einsum("rni,rnj->nij", gathered, gathered)

    return from_rows


def _channel_blocks(combing: Combing) -> dict[tuple[int, int], np.ndarray]:
    """(group, index) -> the classes that go when that channel goes (itself, and for a grid factor
    every class of its slice of the grid)."""
    slices = combing.analysis.factor_slices
    blocks = {}
    for group_index, group in enumerate(combing.groups):
        for index, cls in enumerate(group.classes.tolist()):
            if cls in slices.slices:
                blocks[(group_index, index)] = slices.removed_with(cls)
            else:
                blocks[(group_index, index)] = np.array([cls])
    return blocks
