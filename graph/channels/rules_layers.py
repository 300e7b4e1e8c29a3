"""Channel-label rules for layers with weights (convolution, linear, norms) and matrix products."""

from __future__ import annotations

import numpy as np
import torch

aten = torch.ops.aten


def fix_geometry(ctx, dims) -> None:
    """Spatial dims are geometry, never channels: whatever labels reached them (the H and W factors of a
    Linear output viewed as C x H x W, say) are fixed, so only the channel factor stays prunable.
    Removing a "channel" of a spatial dim would change the image a conv or pool sees and the shapes
    of everything after it."""
    for labels in dims:
        ctx.space.tie(labels, ctx.space.fixed(labels.size))


def _arg(node, index, name, default=None):
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def convolution(ctx, node):
    """x [N, C_in, *S] * w [C_out, C_in / g, *K] -> [N, C_out, *S'].
    Grouped convs are grids (groups x per-group channels) with a fixed group factor, so every
    group loses the same channels; depthwise convs tie input channel c to output channels of c."""
    x, weight = ctx.labels(node.args[0]), ctx.labels(node.args[1])
    bias = ctx.labels(node.args[2]) if _arg(node, 2, "bias") is not None else None
    out_shape = ctx.shape(node)
    if len(x) == len(weight) - 1:
        # An unbatched input ([C, L] for a conv1d): dim 0 is the channels and dim 1 is spatial. Read as
        # [N, C, L] it tied the length to the input channels and pruned positions as channels; with a
        # batch of one in front the rule below applies as it is, and the batch is dropped again.
        batched = convolution_on(ctx, node, [ctx.space.fixed(1), *x], weight, bias, (1, *out_shape))
        return batched[1:]
    return convolution_on(ctx, node, x, weight, bias, out_shape)


def convolution_on(ctx, node, x, weight, bias, out_shape):
    """The convolution rule on the labels of a batched input [N, C_in, *S]."""
    transposed = (node.target is aten.convolution.default and node.args[6]) or "conv_transpose" in str(node.target)
    groups = node.args[8] if node.target is aten.convolution.default else _arg(node, 6, "groups", 1)
    fix_geometry(ctx, [*weight[2:], *x[2:]])  # kernel and input spatial dims
    if transposed:
        if groups != 1:
            ctx.block(x[1], node, "grouped transposed convolution")
            return [x[0], ctx.space.fixed(out_shape[1])] + [ctx.space.fixed(s) for s in out_shape[2:]]
        ctx.space.tie(x[1], weight[0])
        out_channels = weight[1]
    elif groups == 1:
        ctx.space.tie(x[1], weight[1])
        out_channels = weight[0]
    elif weight[1].size == 1:  # depthwise (possibly with a channel multiplier)
        multiplier = weight[0].size // x[1].size
        out_channels = x[1] if multiplier == 1 else ctx.space.grid([x[1], ctx.space.fixed(multiplier)])
        ctx.space.tie(weight[0], out_channels)
        ctx.space.tie(weight[1], ctx.space.fixed(1))
    else:
        ctx.space.tie(x[1], ctx.space.grid([ctx.space.fixed(groups), weight[1]]))
        per_group = ctx.space.fresh(weight[0].size // groups)
        out_channels = ctx.space.grid([ctx.space.fixed(groups), per_group])
        ctx.space.tie(weight[0], out_channels)
    if bias is not None:
        ctx.space.tie(bias[0], out_channels)
    return [x[0], out_channels] + [ctx.space.fixed(s) for s in out_shape[2:]]


def linear(ctx, node):
    x, weight = ctx.labels(node.args[0]), ctx.labels(node.args[1])
    ctx.space.tie(x[-1], weight[1])
    if _arg(node, 2, "bias") is not None:
        ctx.space.tie(ctx.labels(node.args[2])[0], weight[0])
    return list(x[:-1]) + [weight[0]]


def embedding(ctx, node):
    """embedding(weight [V, D], indices) -> [*indices, D]: the embedding width D is a channel dim (tied
    to weight dim 1, prunable with the layer that reads it); the vocabulary is gathered by the
    indices, so its rows are fixed (removing one would shift every index after it)."""
    weight, indices = ctx.labels(node.args[0]), ctx.labels(node.args[1])
    ctx.space.tie(weight[0], ctx.space.fixed(weight[0].size))
    return list(indices) + [weight[1]]


def _tie_batch_dims(ctx, a, b, out_rank, node):
    """Broadcast batch dims of two matrix operands; returns the output's batch labels."""
    batch_a, batch_b = a[:-2], b[:-2]
    rank = out_rank - 2
    result = []
    for d in range(rank):
        da, db = d - (rank - len(batch_a)), d - (rank - len(batch_b))
        la = batch_a[da] if da >= 0 else None
        lb = batch_b[db] if db >= 0 else None
        if la is not None and lb is not None and la.size == lb.size:
            ctx.space.tie(la, lb)
        if la is not None and lb is not None and la.size != lb.size:
            for single in (la, lb):  # a single channel broadcast over the other's: removed, it would be empty
                if single.size == 1 and single.any():
                    ctx.block(single, node, "a single channel broadcast over a larger dim")
        result.append(la if la is not None and la.size != 1 else lb if lb is not None else la)
    return result


def matmul(ctx, node):
    """mm/bmm/matmul: the contracted dims tie; rows come from the left, columns from the right."""
    a, b = ctx.labels(node.args[0]), ctx.labels(node.args[1])
    if len(a) == 1 or len(b) == 1:
        # Blocking only a's last dim left the vector's dim free: it became a group of its own and its
        # removal broke the product ("size mismatch"); the rule's error blocks every operand dim.
        raise ValueError("matmul with a vector operand")
    ctx.space.tie(a[-1], b[-2])
    return _tie_batch_dims(ctx, a, b, len(ctx.shape(node)), node) + [a[-2], b[-1]]


def _einsum_terms(equation: str) -> tuple[list[str], str]:
    equation = equation.replace(" ", "")
    if "->" not in equation or "." in equation:
        raise ValueError(f"einsum {equation!r} without an explicit output or with an ellipsis")
    inputs, output = equation.split("->")
    terms = inputs.split(",")
    if any(len(set(term)) != len(term) for term in terms):
        raise ValueError(f"einsum {equation!r} takes a diagonal")
    return terms, output


def einsum(ctx, node):
    """einsum with an explicit output: dims sharing a letter are tied (size-1 dims broadcast);
    letters missing from the output are summed over, which zero channels do not change."""
    terms, output = _einsum_terms(node.args[0])
    operands = [ctx.labels(arg) for arg in node.args[1]]
    by_letter: dict[str, np.ndarray] = {}
    for term, labels in zip(terms, operands):
        if len(term) != len(labels):
            raise ValueError(f"einsum term {term!r} does not match a rank-{len(labels)} operand")
        for letter, dim_labels in zip(term, labels):
            first = by_letter.setdefault(letter, dim_labels)
            if first.size == 1:
                by_letter[letter] = dim_labels
            elif dim_labels.size != 1:
                ctx.space.tie(first, dim_labels)
    return [by_letter[letter] if by_letter[letter].size == size else ctx.space.fixed(size)
            for letter, size in zip(output, ctx.shape(node))]


def addmm(ctx, node):
    bias, a, b = (ctx.labels(arg) for arg in node.args[:3])
    ctx.space.tie(a[-1], b[-2])
    if bias[-1].size == b[-1].size:
        ctx.space.tie(bias[-1], b[-1])
    return [a[-2], b[-1]]


def attention(ctx, node):
    """scaled_dot_product_attention(q, k, v): q and k share their last dim, k and v their sequence.
    Sequence dims are tokens, geometry: fixed (a softmax runs over k's, so no token removal is exact)."""
    q, k, v = (ctx.labels(arg) for arg in node.args[:3])
    one_key_head = len(k) > 2 and k[-3].size == 1 and v[-3].size == 1  # multi-query: broadcast over q's heads
    if len(q) > 2 and q[-3].size != k[-3].size and not one_key_head:
        # grouped-query attention: each k/v head serves a run of q heads, a mapping this rule does not
        # follow; the error blocks every operand dim rather than pruning q heads out of step
        raise ValueError("grouped-query attention (q and k/v have different head counts)")
    ctx.space.tie(q[-1], k[-1])
    ctx.space.tie(k[-2], v[-2])
    fix_geometry(ctx, [q[-2], k[-2]])
    batch = _tie_batch_dims(ctx, q, k, len(q), node)
    _tie_batch_dims(ctx, k, v, len(v), node)
    mask = _arg(node, 3, "attn_mask")
    if isinstance(mask, torch.fx.Node):
        _tie_to_scores(ctx, ctx.labels(mask), batch + [q[-2], k[-2]])
    return batch + [q[-2], v[-1]]


def _tie_to_scores(ctx, mask, scores) -> None:
    """An additive mask or bias (a relative-position table per head) broadcasts against the attention
    scores [*batch, heads, Lq, Lk]: its dims of full size shrink with them (a head removed takes its
    bias plane along)."""
    offset = len(scores) - len(mask)
    for d, labels in enumerate(mask):
        if d + offset >= 0 and labels.size == scores[d + offset].size:
            ctx.space.tie(labels, scores[d + offset])


def batch_norm(ctx, node):
    """batch_norm(x, weight, bias, running_mean, running_var, training, ...): per-channel parameters tie
    to dim 1. In training mode the statistics run over every other dim: with running statistics those
    are batch and space, but a weight standardisation (timm's StdConv2d/ScaledStdConv2d: a conv weight
    viewed [1, C_out, C_in*k*k] and normalised with training=True) reduces over the input channels, so
    removing one is inexact there."""
    x = ctx.labels(node.args[0])
    for index in range(1, 5):
        if node.args[index] is not None:
            ctx.space.tie(ctx.labels(node.args[index])[0], x[1])
    if _arg(node, 5, "training", False):
        ctx.space.inexact += [labels for d, labels in enumerate(x) if d != 1]
    return list(x)


def layer_norm(ctx, node):
    x = ctx.labels(node.args[0])
    normalised = len(node.args[1])
    for arg in (_arg(node, 2, "weight"), _arg(node, 3, "bias")):
        if arg is not None:
            for dim_labels, x_labels in zip(ctx.labels(arg), x[-normalised:]):
                ctx.space.tie(dim_labels, x_labels)
    for x_labels in x[-normalised:]:
        ctx.space.inexact.append(x_labels)  # mean and variance run over these channels
    return list(x)


def group_norm(ctx, node):
    x = ctx.labels(node.args[0])
    groups = node.args[1]
    per_group = ctx.space.fresh(x[1].size // groups)
    ctx.space.tie(x[1], ctx.space.grid([ctx.space.fixed(groups), per_group]))
    for arg in (_arg(node, 2, "weight"), _arg(node, 3, "bias")):
        if arg is not None:
            ctx.space.tie(ctx.labels(arg)[0], x[1])
    ctx.space.inexact += [x[1], per_group]  # statistics run over the channels of a group
    return list(x)


def pixel_shuffle(ctx, node):
    """pixel_shuffle(x, r): [N, C*r*r, H, W] -> [N, C, H*r, W*r]. The input channels factor row-major as
    C x r x r; C is prunable (a channel takes its r*r sub-pixel planes with it), r x r and the spatial
    dims are geometry."""
    x, ratio = ctx.labels(node.args[0]), int(node.args[1])
    out_shape = ctx.shape(node)
    channels = ctx.space.fresh(out_shape[-3])
    ctx.space.tie(x[-3], ctx.space.grid([channels, ctx.space.fixed(ratio), ctx.space.fixed(ratio)]))
    fix_geometry(ctx, x[-2:])
    return list(x[:-3]) + [channels] + [ctx.space.fixed(size) for size in out_shape[-2:]]


def pixel_unshuffle(ctx, node):
    """pixel_unshuffle(x, r): [N, C, H*r, W*r] -> [N, C*r*r, H, W], the inverse factorisation."""
    x, ratio = ctx.labels(node.args[0]), int(node.args[1])
    out_shape = ctx.shape(node)
    fix_geometry(ctx, x[-2:])
    channels = ctx.space.grid([x[-3], ctx.space.fixed(ratio), ctx.space.fixed(ratio)])
    return list(x[:-3]) + [channels] + [ctx.space.fixed(size) for size in out_shape[-2:]]


def recurrent(ctx, node):
    """aten.lstm.input / aten.gru.input(x, hx, params, has_biases, layers, dropout, train, bidirectional,
    batch_first): the features of x tie to dim 1 of the first layer's input weights (both directions),
    so the layer feeding the recurrence is prunable and `weight_ih_l0` is sliced with it. The hidden
    size is kept (every other weight, the states and the outputs are fixed), and the time dim is
    geometry."""
    x, params = ctx.labels(node.args[0]), list(node.args[2])
    has_biases, bidirectional, batch_first = bool(node.args[3]), bool(node.args[7]), bool(node.args[8])
    per_direction = 4 if has_biases else 2
    first_layer_inputs = [params[0]] + ([params[per_direction]] if bidirectional else [])
    for weight in first_layer_inputs:
        ctx.space.tie(x[-1], ctx.labels(weight)[1])
    for param in params:
        for d, labels in enumerate(ctx.labels(param)):
            if not (param in first_layer_inputs and d == 1):
                ctx.space.tie(labels, ctx.space.fixed(labels.size))
    states = node.args[1] if isinstance(node.args[1], (list, tuple)) else [node.args[1]]
    for state in states:
        fix_geometry(ctx, ctx.labels(state))
    time, batch = (1, 0) if batch_first else (0, 1)
    fix_geometry(ctx, [x[time]])
    outputs = node.meta["val"]
    result = []
    for index, value in enumerate(outputs):
        labels = [ctx.space.fixed(size) for size in value.shape]
        if index == 0:
            labels[batch] = x[batch]
        result.append(labels)
    return result
