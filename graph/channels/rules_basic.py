"""Channel-label rules for element-wise, reduction and shape operators.

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
    return _broadcast_labels(ctx, operands, ctx.shape(node), node)


def _pin_broadcast_singleton(ctx, labels: np.ndarray, node) -> None:
    """A size-1 dim that broadcasts (one sliced channel, `y[:, 0:1]`, spread over many) must keep its
    one element: removed, the dim would be empty and the broadcast would fail."""
    if node is not None and labels.size == 1 and labels.any():
        ctx.block(labels, node, "a single channel broadcast over a larger dim")


def _broadcast_labels(ctx, operands, out_shape, node=None):
    """Labels of the broadcast of `operands` (right-aligned) to `out_shape`."""
    rank = len(out_shape)
    result: list[np.ndarray | None] = [None] * rank
    for labels in operands:
        offset = rank - len(labels)
        for dim, dim_labels in enumerate(labels):
            out_dim = dim + offset
            if dim_labels.size != out_shape[out_dim]:
                _pin_broadcast_singleton(ctx, dim_labels, node)
                continue  # broadcast from size 1: the singleton is not tied to anything
            if result[out_dim] is None:
                result[out_dim] = dim_labels
            else:
                ctx.space.tie(result[out_dim], dim_labels)
    return [r if r is not None else ctx.space.fixed(size) for r, size in zip(result, out_shape)]


def _normalised_dims(dims, rank: int) -> list[int]:
    if dims is None or dims == []:
        return list(range(rank))
    dims = [dims] if isinstance(dims, int) else list(dims)
    return sorted(d % rank for d in dims)


def reduction(ctx, node):
    """sum/mean/amax/... over `dim` (arg 1): reduced dims vanish or become fixed singletons.
    Reducing over a channel dim makes its removal inexact (a mean divides by the count)."""
    labels = ctx.labels(node.args[0])
    dims = _normalised_dims(node.args[1] if len(node.args) > 1 else node.kwargs.get("dim"), len(labels))
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


def permute(ctx, node):
    labels = ctx.labels(node.args[0])
    return [labels[d % len(labels)] for d in node.args[1]]


def transpose(ctx, node):
    labels = list(ctx.labels(node.args[0]))
    a, b = node.args[1] % len(labels), node.args[2] % len(labels)
    labels[a], labels[b] = labels[b], labels[a]
    return labels


def t(ctx, node):
    return list(reversed(ctx.labels(node.args[0])))


def unsqueeze(ctx, node):
    labels = list(ctx.labels(node.args[0]))
    labels.insert(node.args[1] % (len(labels) + 1), ctx.space.fixed(1))
    return labels


def squeeze(ctx, node):
    labels = ctx.labels(node.args[0])
    dims = _normalised_dims(node.args[1] if len(node.args) > 1 else None, len(labels))
    return [lab for d, lab in enumerate(labels) if not (d in dims and lab.size == 1)]


def flatten(ctx, node):
    labels = ctx.labels(node.args[0])
    rank = len(labels)
    start = (node.args[1] if len(node.args) > 1 else 0) % max(rank, 1)
    end = (node.args[2] if len(node.args) > 2 else -1) % max(rank, 1)
    if rank == 0 or start == end:
        return list(labels)
    merged = ctx.space.grid(list(labels[start:end + 1]))
    return list(labels[:start]) + [merged] + list(labels[end + 1:])


def cat(ctx, node):
    tensors = [t for t in node.args[0] if ctx.shape(t) is not None and np.prod(ctx.shape(t)) > 0]
    dim = (node.args[1] if len(node.args) > 1 else 0) % len(ctx.shape(node))
    pieces = [ctx.labels(t) for t in tensors]
    result = []
    for d in range(len(ctx.shape(node))):
        if d == dim:
            result.append(np.concatenate([p[d] for p in pieces]))
        else:
            for other in pieces[1:]:
                ctx.space.tie(pieces[0][d], other[d])
            result.append(pieces[0][d])
    return result


def _split_pieces(ctx, node, sizes):
    labels = ctx.labels(node.args[0])
    dim = (node.args[2] if len(node.args) > 2 else 0) % len(labels)
    bounds = np.cumsum([0] + list(sizes))
    return [[lab[bounds[i]:bounds[i + 1]] if d == dim else lab for d, lab in enumerate(labels)]
            for i in range(len(sizes))]


def split(ctx, node):
    size = ctx.labels(node.args[0])[(node.args[2] if len(node.args) > 2 else 0)].size
    step = node.args[1]
    return _split_pieces(ctx, node, [min(step, size - s) for s in range(0, size, step)])


def split_with_sizes(ctx, node):
    return _split_pieces(ctx, node, list(node.args[1]))


def chunk(ctx, node):
    labels = ctx.labels(node.args[0])
    dim = (node.args[2] if len(node.args) > 2 else 0) % len(labels)
    size, chunks = labels[dim].size, node.args[1]
    step = -(-size // chunks)
    return _split_pieces(ctx, node, [min(step, size - s) for s in range(0, size, step)])


def unbind(ctx, node):
    labels = ctx.labels(node.args[0])
    dim = (node.args[1] if len(node.args) > 1 else 0) % len(labels)
    ctx.block(labels[dim], node, "unbind takes fixed indices of this dim")
    return [[lab for d, lab in enumerate(labels) if d != dim] for _ in range(labels[dim].size)]


def getitem(ctx, node):
    return ctx.labels(node.args[0])[node.args[1]]


def select(ctx, node):
    labels = ctx.labels(node.args[0])
    dim = node.args[1] % len(labels)
    ctx.block(labels[dim], node, "select takes a fixed index of this dim")
    return [lab for d, lab in enumerate(labels) if d != dim]


def slice_(ctx, node):
    labels = list(ctx.labels(node.args[0]))
    dim = (node.args[1] if len(node.args) > 1 else 0) % len(labels)
    start = node.args[2] if len(node.args) > 2 and node.args[2] is not None else 0
    end = node.args[3] if len(node.args) > 3 and node.args[3] is not None else labels[dim].size
    step = node.args[4] if len(node.args) > 4 else 1
    if step != 1:
        labels[dim] = _strided_slice(ctx, node, labels[dim], start, end, step)
        return labels
    labels[dim] = labels[dim][slice(start, end)]
    return labels


def _strided_slice(ctx, node, labels: np.ndarray, start: int, end: int, step: int) -> np.ndarray:
    """x[..., start::step] over a whole dim with start < step (the even or odd elements that interleaved
    rotary embeddings pair up): the dim factors row-major as (size / step) x step, the slice takes one
    position of the fixed `step` factor, and its output is the (size / step) factor. So a removal takes
    whole strides (pairs) and every position in a stride stays where it was (start is unchanged).
    Any other strided slice is blocked."""
    size = labels.size
    if not (0 <= start < step and end >= size and size % step == 0):
        ctx.block(labels, node, "strided slice that does not cover whole strides of this dim")
        return ctx.space.fixed(ctx.shape(node)[node.args[1] % len(ctx.shape(node))])
    strides = ctx.space.fresh(size // step)
    ctx.space.tie(labels, ctx.space.grid([strides, ctx.space.fixed(step)]))
    return strides


def stack(ctx, node):
    """stack(tensors, dim): the inputs' dims are tied (they must keep equal shapes) and the new dim,
    one index per input tensor, is fixed (an input is never removed)."""
    pieces = [ctx.labels(t) for t in node.args[0]]
    rank = len(pieces[0]) + 1
    dim = (node.args[1] if len(node.args) > 1 else 0) % rank
    for other in pieces[1:]:
        for a, b in zip(pieces[0], other):
            ctx.space.tie(a, b)
    result = list(pieces[0])
    result.insert(dim, ctx.space.fixed(len(pieces)))
    return result


def index(ctx, node):
    """x[i0, i1, ...] with integer index tensors (a relative-position table gathered by a buffer of
    indices): gathered dims are blocked; the dims the indices make are the index tensors' own dims,
    broadcast together (dropping position p of the result drops it from every index tensor); other
    dims pass through. Index dims land in place when the indexed dims are adjacent, else in front."""
    labels = ctx.labels(node.args[0])
    indices = list(node.args[1])
    positions = [d for d, i in enumerate(indices) if i is not None]
    if any(indices[d].meta["val"].dtype in (torch.bool, torch.uint8) for d in positions):
        raise ValueError("boolean mask index")
    for d in positions:
        ctx.block(labels[d], node, "index gathers along this dim")
    out_shape = ctx.shape(node)
    rest = [lab for d, lab in enumerate(labels) if d not in positions]
    at = positions[0] if positions == list(range(positions[0], positions[-1] + 1)) else 0
    made_shape = out_shape[at:at + len(out_shape) - len(rest)]
    made = _broadcast_labels(ctx, [ctx.labels(indices[d]) for d in positions], made_shape)
    result = rest[:at] + made + rest[at:]
    if [lab.size for lab in result] != list(out_shape):
        raise ValueError(f"unexpected result shape {out_shape}")
    return result


def repeat(ctx, node):
    """x.repeat(r0, r1, ...): dim d becomes r_d tiles of itself, a row-major grid (r_d, size) whose tile
    factor is fixed, so channel c goes from every tile at once and the repeat counts stay as they are.
    New leading dims (more counts than dims) are fixed."""
    labels, repeats = ctx.labels(node.args[0]), list(node.args[1])
    offset = len(repeats) - len(labels)
    result = [ctx.space.fixed(r) for r in repeats[:offset]]
    for lab, r in zip(labels, repeats[offset:]):
        result.append(lab if r == 1 else ctx.space.grid([ctx.space.fixed(r), lab]))
    return result


def repeat_interleave(ctx, node):
    """x.repeat_interleave(r, dim): index i of dim becomes r consecutive copies, the grid (size, r) with
    a fixed copy factor. Without a dim (a flattening) or with an output_size literal: unsupported."""
    labels, repeats = ctx.labels(node.args[0]), node.args[1]
    dim = node.args[2] if len(node.args) > 2 else node.kwargs.get("dim")
    output_size = node.args[3] if len(node.args) > 3 else node.kwargs.get("output_size")
    if dim is None or output_size is not None or not isinstance(repeats, int):
        raise ValueError("repeat_interleave without a dim, with an output_size or with tensor repeats")
    result = list(labels)
    result[dim % len(labels)] = ctx.space.grid([labels[dim % len(labels)], ctx.space.fixed(repeats)])
    return result


def expand(ctx, node):
    """Dims that expand creates (new leading dims, or size 1 grown) hold copies: they get fresh labels,
    free to shrink (the size literal is rewritten), and other operators tie them where they must."""
    labels = ctx.labels(node.args[0])
    out_shape = ctx.shape(node)
    offset = len(out_shape) - len(labels)
    result = [ctx.space.fresh(size) for size in out_shape[:offset]]
    for d, lab in enumerate(labels):
        if lab.size != out_shape[d + offset]:
            _pin_broadcast_singleton(ctx, lab, node)
        result.append(lab if lab.size == out_shape[d + offset] else ctx.space.fresh(out_shape[d + offset]))
    return result

