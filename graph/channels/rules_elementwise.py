"""Channel-label rules for element-wise operators (with broadcasting), reductions, softmax, pooling and
padding: operators that keep the channel dim where it is.

Each rule takes the analysis context and a node and returns the labels of the node's output:
a list with one label array per dim (or, for operators returning several tensors, a list of those).
"""

from __future__ import annotations

import re

import numpy as np
import torch

from prunefx.graph.channels.rules_layers import fix_geometry

aten = torch.ops.aten


def same_as_input(ctx, node):
    """Unary element-wise operators, copies, dropout, casts: output index i is input index i."""
    return list(ctx.labels(node.args[0]))


def native_dropout(ctx, node):
    """native_dropout(x, p, train) -> (output, mask): both are element-wise copies of x's dims."""
    labels = list(ctx.labels(node.args[0]))
    return [labels, list(labels)]


def new_tensor(ctx, node):
    """x.new_zeros(size) and kin: only x's dtype and device are read; the sizes are literals."""
    return [ctx.space.fixed(size) for size in ctx.shape(node)]


def broadcast(ctx, node):
    """Element-wise operators with broadcasting: dims of equal size are tied, size-1 dims broadcast.
    Also x.expand_as(other): its output has other's shape, with x broadcast to it; no size literal."""
    operands = [ctx.labels(arg) for arg in list(node.args) + list(node.kwargs.values())
                if isinstance(arg, torch.fx.Node) and ctx.labels(arg) is not None]
    return broadcast_labels(ctx, operands, ctx.shape(node), node)


def pin_broadcast_singleton(ctx, labels: np.ndarray, node) -> None:
    """A size-1 dim that broadcasts (one sliced channel, `y[:, 0:1]`, spread over many) must keep its
    one element: removed, the dim would be empty and the broadcast would fail."""
    if node is not None and labels.size == 1 and labels.any():
        ctx.block(labels, node, "a single channel broadcast over a larger dim")


def broadcast_labels(ctx, operands, out_shape, node=None):
    """Labels of the broadcast of `operands` (right-aligned) to `out_shape`."""
    rank = len(out_shape)
    result: list[np.ndarray | None] = [None] * rank
    for labels in operands:
        offset = rank - len(labels)
        for dim, dim_labels in enumerate(labels):
            out_dim = dim + offset
            if dim_labels.size != out_shape[out_dim]:
                pin_broadcast_singleton(ctx, dim_labels, node)
                continue  # broadcast from size 1: the singleton is not tied to anything
            if result[out_dim] is None:
                result[out_dim] = dim_labels
            else:
                ctx.space.tie(result[out_dim], dim_labels)
    return [r if r is not None else ctx.space.fixed(size) for r, size in zip(result, out_shape)]


def normalised_dims(dims, rank: int) -> list[int]:
    if dims is None or dims == []:
        return list(range(rank))
    dims = [dims] if isinstance(dims, int) else list(dims)
    return sorted(d % rank for d in dims)


def reduction(ctx, node):
    """sum/mean/amax/... over `dim` (arg 1): reduced dims vanish or become fixed singletons.
    Reducing over a channel dim makes its removal inexact (a mean divides by the count)."""
    labels = ctx.labels(node.args[0])
    dims = normalised_dims(node.args[1] if len(node.args) > 1 else node.kwargs.get("dim"), len(labels))
    keepdim = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
    for dim in dims:
        if node.target not in (aten.sum.dim_IntList,):
            ctx.space.inexact.append(labels[dim])
    return [ctx.space.fixed(1) if d in dims else lab for d, lab in enumerate(labels) if keepdim or d not in dims]


def softmax(ctx, node):
    """The normalised dim is fixed: its entries are the categories of one distribution (attention keys,
    the 16 distance bins of YOLO's distribution-focal-loss head, class scores), so dropping one changes
    what every other entry means, and the shapes after it (a DFL integral reads exactly 16 bins). It was
    once prunable-but-inexact, and YOLO's bins went from 16 to 8 with the output shapes unchanged."""
    labels = list(ctx.labels(node.args[0]))
    normalised = labels[node.args[1] % len(labels)]
    ctx.space.tie(normalised, ctx.space.fixed(normalised.size))
    return labels


def pooling(ctx, node):
    """Pooling, padding, resizing: batch and channel pass through, spatial dims are new and fixed.
    If the batch or channel dim changes size (padding channels), the channels are blocked.
    The operator's name says how many trailing dims are spatial (max_pool2d: 2): an unbatched input
    [C, H, W] has one leading dim, not two, and H must not pass through as a channel."""
    labels = ctx.labels(node.args[0])
    spatial = re.search(r"(\d)d", str(node.target).split(".")[1])
    lead = len(labels) - int(spatial.group(1)) if spatial else 2
    if lead < 1 or any(lab.size != size for lab, size in zip(labels[:lead], ctx.shape(node)[:lead])):
        for lab in labels:
            ctx.block(lab, node, "changes the size of the batch or channel dim")
        return [ctx.space.fixed(size) for size in ctx.shape(node)]
    fix_geometry(ctx, labels[lead:])  # the window slides over these: geometry, whatever labels reached them
    return list(labels[:lead]) + [ctx.space.fixed(size) for size in ctx.shape(node)[lead:]]


def roll(ctx, node):
    """roll(x, shifts, dims): rolled dims are re-indexed (blocked if they carry channels)."""
    labels = list(ctx.labels(node.args[0]))
    dims = node.args[2] if len(node.args) > 2 else []
    for dim in ([dims] if isinstance(dims, int) else dims) or range(len(labels)):
        ctx.block(labels[dim % len(labels)], node, "roll shifts this dim")
        labels[dim % len(labels)] = ctx.space.fixed(labels[dim % len(labels)].size)
    return labels


def constant_pad(ctx, node):
    """constant_pad_nd(x, pad): padded dims (from the last one backwards) are new and fixed."""
    labels = list(ctx.labels(node.args[0]))
    pads = node.args[1]
    for k in range(len(pads) // 2):
        dim = len(labels) - 1 - k
        if pads[2 * k] or pads[2 * k + 1]:
            ctx.block(labels[dim], node, "pads this dim")
            labels[dim] = ctx.space.fixed(ctx.shape(node)[dim])
    return labels
