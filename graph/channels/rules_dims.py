"""Channel-label rules for operators that move, join, split, index or repeat dims: permute and
transpose, (un)squeeze and flatten, cat and stack, split/chunk/unbind and getitem, select, slice and
index, repeat and expand. Each rule takes the analysis context and a node and returns the labels of the
node's output (see graph/channels/rules_elementwise.py for the form).
"""

from __future__ import annotations

import numpy as np
import torch

from prunefx.graph.channels.rules_elementwise import (
    broadcast_labels,
    normalised_dims,
    pin_broadcast_singleton,
)

aten = torch.ops.aten


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
    dims = normalised_dims(node.args[1] if len(node.args) > 1 else None, len(labels))
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
    made = broadcast_labels(ctx, [ctx.labels(indices[d]) for d in positions], made_shape)
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
            pin_broadcast_singleton(ctx, lab, node)
        result.append(lab if lab.size == out_shape[d + offset] else ctx.space.fresh(out_shape[d + offset]))
    return result
