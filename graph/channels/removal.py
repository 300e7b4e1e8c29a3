"""Physically remove channel classes found by dependency analysis.

Every parameter and buffer is sliced along each dim by the labels that survive; every literal that
depends on a width is rewritten by the operator's entry in graph/channel_literals.LITERAL_REWRITES.
"""

from __future__ import annotations

import numpy as np
import torch

from prunefx.graph.attributes import get_tensor, set_tensor
from prunefx.graph.channels.analysis import ChannelAnalysis
from prunefx.graph.channels.literals import LITERAL_REWRITES, keep_mask


def expand_mask(analysis: ChannelAnalysis, mask: np.ndarray) -> np.ndarray:
    """Grow a boolean mask over classes to a fixpoint: removing a grid factor index (a head) removes every class
    inside its slice of the grid. Each rule starts from one class, so the fixpoint is the union of what goes
    with each factor class in the mask (analysis.factor_slices). Nothing to grow: `mask` itself, unchanged (a
    search asks this for every candidate, and no caller writes into the result)."""
    slices = analysis.factor_slices
    taking_others = slices.taking_along[mask[slices.taking_along]]
    if not taking_others.size:
        return mask
    mask = mask.copy()
    for cls in taking_others.tolist():
        mask[slices.removed_with(cls)] = True
    return mask


def expand_removed(analysis: ChannelAnalysis, removed: set[int]) -> set[int]:
    """The classes that go with `removed` (see expand_mask), as a set."""
    mask = np.zeros(int(analysis.classes.max()) + 1, dtype=bool)
    mask[list(removed)] = True
    return set(np.flatnonzero(expand_mask(analysis, mask)).tolist())


def sliced_by_classes(tensor: torch.Tensor, analysis: ChannelAnalysis, node, removed: np.ndarray
                      ) -> tuple[torch.Tensor, dict[int, np.ndarray]]:
    """`tensor` (what get_attr `node` reads) without the positions of the classes `removed` along each dim, and
    the keep mask of each dim cut (none: `tensor` itself)."""
    sliced, masks = tensor, {}
    for dim, labels in enumerate(analysis.node_labels[node]):
        keep = keep_mask(analysis, labels, removed)
        if not keep.all():
            sliced = sliced.index_select(dim, torch.from_numpy(np.flatnonzero(keep)).to(sliced.device))
            masks[dim] = keep
    return (sliced.contiguous() if masks else tensor), masks


def _slice_attribute(module, node, analysis, removed) -> dict[int, np.ndarray]:
    """Slice the tensor `node` reads; the keep mask of each dim sliced."""
    sliced, masks = sliced_by_classes(get_tensor(module, node.target), analysis, node, removed)
    if masks:
        set_tensor(module, node.target, sliced)
    return masks


def remove_classes(module: torch.fx.GraphModule, analysis: ChannelAnalysis, removed_classes: set[int]
                   ) -> dict[str, dict[int, np.ndarray]]:
    """Slice tensors and rewrite literals so that `removed_classes` disappear; returns the tensors sliced, by
    name, with the keep mask of each dim sliced (what graph/channels/kept_channels.py records)."""
    removed = np.array(sorted(expand_removed(analysis, removed_classes)), dtype=np.int64)
    if removed.size == 0:
        return {}
    sliced = {}
    for node in list(module.graph.nodes):
        if node not in analysis.node_labels:
            continue
        if node.op == "get_attr":
            masks = _slice_attribute(module, node, analysis, removed)
            if masks:
                sliced[str(node.target)] = masks
        elif node.op == "call_function":
            rewrite = LITERAL_REWRITES.get(node.target)
            if rewrite is not None:
                rewrite(node, analysis, removed)
    return sliced
