"""Physically remove channel classes found by dependency analysis.

Every parameter and buffer is sliced along each dim by the labels that survive; every literal that
depends on a width is rewritten from the surviving label counts of the node's output: view/reshape/
expand/unflatten sizes, depthwise conv `groups`, layer-norm shapes, split sizes, slice bounds, and
the attention scale (kept at its original value, since the default depends on the head dim).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from prunefx.graph.attributes import get_tensor, set_tensor
from prunefx.graph.channel_analysis import ChannelAnalysis

aten = torch.ops.aten
_SIZE_LITERAL = {aten.view.default: 1, aten.reshape.default: 1, aten._unsafe_view.default: 1,
                 aten.expand.default: 1}


def expand_mask(analysis: ChannelAnalysis, mask: np.ndarray) -> np.ndarray:
    """Grow a boolean mask over classes to a fixpoint: removing a grid factor index (a head)
    removes every class inside its slice of the grid."""
    mask = mask.copy()
    classes = analysis.classes
    changed = True
    while changed:
        changed = False
        for grid in analysis.space.grids:
            for axis, factor in enumerate(grid.factors):
                gone = mask[classes[factor]]
                if gone.any():
                    inside = classes[np.compress(gone, grid.elements, axis=axis)]
                    if not mask[inside].all():
                        mask[inside] = True
                        changed = True
    return mask


def expand_removed(analysis: ChannelAnalysis, removed: set[int]) -> set[int]:
    """The classes that go with `removed` (see expand_mask), as a set."""
    mask = np.zeros(int(analysis.classes.max()) + 1, dtype=bool)
    mask[list(removed)] = True
    return set(np.flatnonzero(expand_mask(analysis, mask)).tolist())


def _keep(analysis: ChannelAnalysis, labels: np.ndarray, removed: np.ndarray) -> np.ndarray:
    return ~np.isin(analysis.classes[labels], removed)


def _new_shape(analysis, node, removed) -> list[int]:
    return [int(_keep(analysis, lab, removed).sum()) for lab in analysis.node_labels[node]]


def _slice_attribute(module, node, analysis, removed) -> bool:
    tensor = get_tensor(module, node.target)
    sliced = tensor
    for dim, labels in enumerate(analysis.node_labels[node]):
        keep = _keep(analysis, labels, removed)
        if not keep.all():
            sliced = sliced.index_select(dim, torch.from_numpy(np.flatnonzero(keep)))
    if sliced is tensor:
        return False
    set_tensor(module, node.target, sliced.contiguous())
    return True


def _replace_arg(node, index, value) -> None:
    args = list(node.args)
    args[index] = value
    node.args = tuple(args)


def _rewrite_literals(node, analysis, removed) -> None:
    target = node.target
    labels = analysis.node_labels
    if target in _SIZE_LITERAL:
        _replace_arg(node, 1, _new_shape(analysis, node, removed))
    elif target is aten.unflatten.int:
        dim = node.args[1] % len(labels[node.args[0]])
        _replace_arg(node, 2, _new_shape(analysis, node, removed)[dim:dim + len(node.args[2])])
    elif target is aten.layer_norm.default:
        _replace_arg(node, 1, _new_shape(analysis, node, removed)[-len(node.args[1]):])
    elif target in (aten.split_with_sizes.default, aten.split.Tensor, aten.chunk.default):
        _rewrite_split(node, analysis, removed)
    elif target is aten.slice.Tensor:
        _rewrite_slice(node, analysis, removed)
    elif "conv" in str(target) and not str(target).startswith("aten.conv_transpose"):
        _rewrite_groups(node, analysis, removed)
    elif target is aten.scaled_dot_product_attention.default:
        _keep_attention_scale(node, analysis, removed)


def _rewrite_split(node, analysis, removed) -> None:
    pieces = analysis.node_labels[node]
    dim_arg = 2 if len(node.args) > 2 else None
    dim = node.args[2] if dim_arg else 0
    dim %= len(pieces[0])
    sizes = [int(_keep(analysis, piece[dim], removed).sum()) for piece in pieces]
    if sizes != [piece[dim].size for piece in pieces]:
        node.target = aten.split_with_sizes.default
        node.args = (node.args[0], sizes, dim)


def _rewrite_slice(node, analysis, removed) -> None:
    source = analysis.node_labels[node.args[0]]
    dim = (node.args[1] if len(node.args) > 1 else 0) % len(source)
    keep = _keep(analysis, source[dim], removed)
    if keep.all():
        return
    size = source[dim].size
    start = node.args[2] if len(node.args) > 2 and node.args[2] is not None else 0
    end = node.args[3] if len(node.args) > 3 and node.args[3] is not None else size
    start, end = (min(max(v + size if v < 0 else v, 0), size) for v in (start, end))
    args = list(node.args) + [None] * (4 - len(node.args))
    if len(node.args) > 4 and node.args[4] != 1:
        # A strided slice over whole strides (channel_rules_basic._strided_slice): whole strides go,
        # so the start is a position within a stride and stays; the end is the new size.
        args[3] = int(keep.sum())
        node.args = tuple(args)
        return
    args[2], args[3] = int(keep[:start].sum()), int(keep[:end].sum())
    node.args = tuple(args)


def _rewrite_groups(node, analysis, removed) -> None:
    index = 8 if node.target is aten.convolution.default else 6
    if len(node.args) <= index or node.args[index] == 1:
        return
    # the input's channel dim: 1 for a batched input [N, C, *S], 0 for an unbatched one [C, *S]
    spatial = len(analysis.node_labels[node.args[1]]) - 2
    channels = analysis.node_labels[node.args[0]][-spatial - 1]
    if node.args[index] == channels.size:  # depthwise: one group per input channel
        _replace_arg(node, index, int(_keep(analysis, channels, removed).sum()))


def _keep_attention_scale(node, analysis, removed) -> None:
    query = analysis.node_labels[node.args[0]][-1]
    if node.kwargs.get("scale") is None and not _keep(analysis, query, removed).all():
        node.kwargs = {**node.kwargs, "scale": 1.0 / math.sqrt(query.size)}


def remove_classes(module: torch.fx.GraphModule, analysis: ChannelAnalysis, removed_classes: set[int]) -> int:
    """Slice tensors and rewrite literals so that `removed_classes` disappear; returns tensors sliced."""
    removed = np.array(sorted(expand_removed(analysis, removed_classes)), dtype=np.int64)
    if removed.size == 0:
        return 0
    sliced = 0
    for node in list(module.graph.nodes):
        if node not in analysis.node_labels:
            continue
        if node.op == "get_attr":
            sliced += _slice_attribute(module, node, analysis, removed)
        elif node.op == "call_function":
            _rewrite_literals(node, analysis, removed)
    return sliced
