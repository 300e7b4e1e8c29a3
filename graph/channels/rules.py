"""The table of channel-label rules: operator -> rule. An operator missing here blocks every dim it
touches (its channels are not prunable) and the analysis reports it; it never guesses. Together with
graph/channel_literals.LITERAL_REWRITES (how an operator's literal arguments change when channels go)
this is all prunefx knows about an operator's channels; `channel_rule` adds to both."""

from __future__ import annotations

import operator

import torch

from prunefx.graph.channels import rules_dims as dims
from prunefx.graph.channels import rules_elementwise as elementwise
from prunefx.graph.channels import rules_layers as layers
from prunefx.graph.channels.literals import LITERAL_REWRITES, LiteralRewrite
from prunefx.graph.channels.rules_reshape import reshape_as, view
from prunefx.graph.errors import PrunefxError

aten = torch.ops.aten

_UNARY = [
    "relu", "relu_", "gelu", "gelu_", "silu", "silu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "hardswish",
    "hardswish_", "hardsigmoid", "hardsigmoid_", "hardtanh", "hardtanh_", "relu6", "leaky_relu", "leaky_relu_",
    "elu", "elu_", "mish", "mish_", "softplus", "neg", "exp", "log", "sqrt", "rsqrt", "abs", "erf", "clone",
    "contiguous", "detach", "alias", "dropout", "feature_dropout", "alpha_dropout", "feature_alpha_dropout",
    "_to_copy", "to", "type_as", "square", "reciprocal",
    "lift_fresh_copy", "_assert_tensor_metadata", "dropout_", "feature_dropout_",
    "alpha_dropout_", "feature_alpha_dropout_",
]
# pow and clamp take tensor exponents and bounds too (pow.Tensor_Tensor, clamp.Tensor): element-wise with
# broadcasting over every tensor operand. As unary rules they left a per-channel exponent untied, and a
# removal then failed with "Attempting to broadcast a dimension of length 8".
_BINARY = ["add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_", "where", "maximum", "minimum", "rsub",
           "eq", "ne", "lt", "le", "gt", "ge", "masked_fill", "masked_fill_", "copy_",
           "pow", "clamp", "clamp_", "clamp_min", "clamp_max"]
_REDUCTIONS = ["mean", "sum", "amax", "amin"]


def _overloads(name: str):
    packet = getattr(aten, name, None)
    if packet is None:
        return []
    return [getattr(packet, overload) for overload in packet.overloads()]


def _table() -> dict:
    rules = {}
    for name in _UNARY:
        rules.update(dict.fromkeys(_overloads(name), elementwise.same_as_input))
    for name in _BINARY:
        rules.update(dict.fromkeys(_overloads(name), elementwise.broadcast))
    for name in _REDUCTIONS:
        rules.update({o: elementwise.reduction for o in _overloads(name) if "dim" in str(o) or "IntList" in str(o)})
    # amax/amin take their dims in the default overload (sum.default and mean.default take a dtype there)
    rules.update({aten.amax.default: elementwise.reduction, aten.amin.default: elementwise.reduction})
    for name in ("softmax", "_softmax", "log_softmax", "_log_softmax"):
        rules.update(dict.fromkeys(_overloads(name), elementwise.softmax))
    for name in ("max_pool1d", "max_pool2d", "max_pool3d", "avg_pool1d", "avg_pool2d", "avg_pool3d",
                 "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d", "adaptive_max_pool2d",
                 "upsample_nearest2d", "upsample_bilinear2d", "_upsample_bilinear2d_aa", "upsample_bicubic2d",
                 "reflection_pad2d", "replicate_pad2d"):
        rules.update(dict.fromkeys(_overloads(name), elementwise.pooling))
    for name in ("view", "reshape", "_unsafe_view", "unflatten"):
        rules.update(dict.fromkeys(_overloads(name), view))
    rules.update({
        aten.native_dropout.default: elementwise.native_dropout, aten.roll.default: elementwise.roll, aten.constant_pad_nd.default: elementwise.constant_pad,
        aten.pad.default: elementwise.constant_pad, aten.reshape_as.default: reshape_as,
        aten.permute.default: dims.permute, aten.transpose.int: dims.transpose, aten.t.default: dims.t,
        aten.swapaxes.default: dims.transpose, aten.swapdims.default: dims.transpose,
        aten.unsqueeze.default: dims.unsqueeze, aten.flatten.using_ints: dims.flatten,
        aten.cat.default: dims.cat, aten.concat.default: dims.cat, aten.stack.default: dims.stack,
        aten.split.Tensor: dims.split, aten.split_with_sizes.default: dims.split_with_sizes,
        aten.chunk.default: dims.chunk, aten.unbind.int: dims.unbind, operator.getitem: dims.getitem,
        aten.select.int: dims.select, aten.slice.Tensor: dims.slice_, aten.expand.default: dims.expand,
        aten.index.Tensor: dims.index, aten.expand_as.default: elementwise.broadcast,
        aten.repeat.default: dims.repeat, aten.repeat_interleave.self_int: dims.repeat_interleave,
        aten.linear.default: layers.linear, aten.embedding.default: layers.embedding,
        aten.matmul.default: layers.matmul, aten.mm.default: layers.matmul,
        aten.bmm.default: layers.matmul, aten.addmm.default: layers.addmm, aten.einsum.default: layers.einsum,
        aten.scaled_dot_product_attention.default: layers.attention,
        aten.batch_norm.default: layers.batch_norm, aten.layer_norm.default: layers.layer_norm,
        aten.group_norm.default: layers.group_norm,
        aten.pixel_shuffle.default: layers.pixel_shuffle, aten.pixel_unshuffle.default: layers.pixel_unshuffle,
        aten.lstm.input: layers.recurrent, aten.gru.input: layers.recurrent,
    })
    rules.update(dict.fromkeys(_overloads("squeeze"), dims.squeeze))
    for name in ("new_zeros", "new_ones", "new_empty", "new_full"):
        rules.update(dict.fromkeys(_overloads(name), elementwise.new_tensor))
    for name in ("conv1d", "conv2d", "conv3d", "convolution", "conv_transpose1d", "conv_transpose2d",
                 "conv_transpose3d"):
        rules.update(dict.fromkeys(_overloads(name), layers.convolution))
    return rules


RULES = _table()
# What prunefx ships, kept apart from what users add: replacing one of these needs `override=True`.
_SHIPPED_RULES = dict(RULES)
_SHIPPED_REWRITES = dict(LITERAL_REWRITES)


def channel_rule(operator, *, rewrite: LiteralRewrite | None = None, override: bool = False):
    """Register a channel rule for an operator prunefx has none for (a `torch.library` custom op, say):

        @prunefx.channel_rule(torch.ops.mylib.scaled_relu.default)
        def scaled_relu(ctx, node):
            return list(ctx.labels(node.args[0]))   # element-wise: output dim d carries input dim d

    A rule receives the analysis context and the fx node and returns one label array per output dim
    (a list of such lists for several outputs). `ctx.labels(arg)` gives an input's labels,
    `ctx.space.tie(a, b)` joins two dims that must shrink together, `ctx.space.fixed(n)` makes a dim
    that never shrinks, `ctx.block(labels, node, reason)` refuses to prune those channels and reports
    why. `same_as_input` (element-wise) and `broadcast` are shipped rules to reuse. `rewrite`, a function
    (node, analysis, removed classes), rewrites the node's literal arguments when channels go (as in
    graph/channels/literals.py); without it a rule must fix (or block) every dim those arguments spell
    out. An operator without a rule blocks every dim it touches, never guessed.

    An operator that already has a rule is refused unless `override=True` (replacing how, say, aten.add
    prunes changes every model). `remove_channel_rule` takes a rule away, restoring the shipped one.
    """
    if not isinstance(operator, torch._ops.OpOverload):
        raise PrunefxError(f"channel_rule takes an operator overload such as torch.ops.mylib.op.default, "
                           f"not {operator!r}")

    def register(rule):
        if not callable(rule):
            raise PrunefxError(f"the channel rule for {operator} must be a function (ctx, node) -> labels")
        if rewrite is not None and not callable(rewrite):
            raise PrunefxError(f"the literal rewrite for {operator} must be a function (node, analysis, removed)")
        if not override and (operator in RULES or (rewrite is not None and operator in LITERAL_REWRITES)):
            shipped = "prunefx ships" if operator in _SHIPPED_RULES else "there is already"
            raise PrunefxError(f"{shipped} a channel rule for {operator}; pass override=True to replace it")
        RULES[operator] = rule
        if rewrite is not None:
            LITERAL_REWRITES[operator] = rewrite
        return rule

    return register


def remove_channel_rule(operator) -> None:
    """Take away a rule registered with `channel_rule` (and its literal rewrite): the operator is back to
    its shipped rule, or blocked when prunefx ships none."""
    if not any(operator in table for table in (RULES, LITERAL_REWRITES)):  # a name as text would do nothing
        raise PrunefxError(f"remove_channel_rule: {operator!r:.80} has no rule registered (it takes the operator "
                           "overload given to channel_rule, such as torch.ops.mylib.op.default)")
    for table, shipped in ((RULES, _SHIPPED_RULES), (LITERAL_REWRITES, _SHIPPED_REWRITES)):
        if operator in shipped:
            table[operator] = shipped[operator]
        else:
            table.pop(operator, None)


same_as_input = elementwise.same_as_input
broadcast = elementwise.broadcast
