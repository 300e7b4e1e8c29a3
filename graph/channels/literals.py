"""How an operator's literal arguments change when channels go: one rewriter per operator, in one table.

The channel rules (graph/channels/rules.py) say which dims of an operator carry which channels; this table
says, for operators that spell a width in their arguments, how those arguments are rewritten from the
surviving label counts: view/reshape/expand/unflatten sizes, depthwise convolution `groups`, layer-norm
shapes, split sizes, slice bounds, and the attention scale (kept at its original value, since the default
depends on the head dim). A custom operator registers its rewriter with its rule
(`prunefx.channel_rule(op, rewrite=...)`); an operator without an entry keeps its arguments as they are.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch

from prunefx.graph.operators import CONVOLUTIONS

if TYPE_CHECKING:  # channel_analysis imports the rules, which import this table
    from prunefx.graph.channels.analysis import ChannelAnalysis

aten = torch.ops.aten

# (node, analysis, removed classes) -> None, rewriting node.args / node.kwargs / node.target in place
LiteralRewrite = Callable[[torch.fx.Node, "ChannelAnalysis", np.ndarray], None]


def keep_mask(analysis: ChannelAnalysis, labels: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """Which positions of a dim with `labels` survive the removal of the classes `removed`."""
    return ~np.isin(analysis.classes[labels], removed)


def _new_shape(analysis, node, removed) -> list[int]:
    return [int(keep_mask(analysis, lab, removed).sum()) for lab in analysis.node_labels[node]]


def _replace_arg(node, index, value) -> None:
    args = list(node.args)
    args[index] = value
    node.args = tuple(args)


def _rewrite_size(node, analysis, removed) -> None:
    _replace_arg(node, 1, _new_shape(analysis, node, removed))


def _rewrite_unflatten(node, analysis, removed) -> None:
    dim = node.args[1] % len(analysis.node_labels[node.args[0]])
    _replace_arg(node, 2, _new_shape(analysis, node, removed)[dim:dim + len(node.args[2])])


def _rewrite_layer_norm(node, analysis, removed) -> None:
    _replace_arg(node, 1, _new_shape(analysis, node, removed)[-len(node.args[1]):])


def _rewrite_split(node, analysis, removed) -> None:
    pieces = analysis.node_labels[node]
    dim_arg = 2 if len(node.args) > 2 else None
    dim = node.args[2] if dim_arg else 0
    dim %= len(pieces[0])
    sizes = [int(keep_mask(analysis, piece[dim], removed).sum()) for piece in pieces]
    if node.target is aten.chunk.default and len(set(sizes)) == 1 and len(sizes) == node.args[1]:
        return  # equal pieces, as many as before: chunk still gives them (and the model's own call too)
    if sizes != [piece[dim].size for piece in pieces]:
        node.target = aten.split_with_sizes.default
        node.args = (node.args[0], sizes, dim)


def _rewrite_slice(node, analysis, removed) -> None:
    source = analysis.node_labels[node.args[0]]
    dim = (node.args[1] if len(node.args) > 1 else 0) % len(source)
    keep = keep_mask(analysis, source[dim], removed)
    if keep.all():
        return
    size = source[dim].size
    start = node.args[2] if len(node.args) > 2 and node.args[2] is not None else 0
    end = node.args[3] if len(node.args) > 3 and node.args[3] is not None else size
    start, end = (min(max(v + size if v < 0 else v, 0), size) for v in (start, end))
    args = list(node.args) + [None] * (4 - len(node.args))
    if len(node.args) > 4 and node.args[4] != 1:
        # A strided slice over whole strides (graph/channels/rules_dims._strided_slice): whole strides go,
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
        _replace_arg(node, index, int(keep_mask(analysis, channels, removed).sum()))


def _keep_attention_scale(node, analysis, removed) -> None:
    query = analysis.node_labels[node.args[0]][-1]
    if node.kwargs.get("scale") is None and not keep_mask(analysis, query, removed).all():
        node.kwargs = {**node.kwargs, "scale": 1.0 / math.sqrt(query.size)}


LITERAL_REWRITES: dict[object, LiteralRewrite] = {
    aten.view.default: _rewrite_size, aten.reshape.default: _rewrite_size, aten._unsafe_view.default: _rewrite_size,
    aten.expand.default: _rewrite_size, aten.unflatten.int: _rewrite_unflatten,
    aten.layer_norm.default: _rewrite_layer_norm,
    aten.split_with_sizes.default: _rewrite_split, aten.split.Tensor: _rewrite_split, aten.chunk.default: _rewrite_split,
    aten.slice.Tensor: _rewrite_slice,
    aten.scaled_dot_product_attention.default: _keep_attention_scale,
    **dict.fromkeys(CONVOLUTIONS, _rewrite_groups),  # transposed convolutions have no groups to rewrite here
}
