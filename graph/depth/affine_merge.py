"""Exact algebra of affine layers: compose convolutions, linear layers and per-channel scales/shifts.

Pure tensor functions, no graph: `merge(ops, input_shape)` turns a sequence of `Conv`, `Linear` and
`ChannelAffine` maps into one, its linear part composed pairwise and its constant part the sequence applied
to zeros; what is not exactly representable raises NotExact. All arithmetic is float64 on the CPU. The
composition rules: see docs/algorithms.md, 'The affine algebra'.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch

from prunefx.graph.depth.affine_maps import ChannelAffine, Conv, Linear, NotExact, Tensor, f64
from prunefx.graph.depth.kernel_composition import compose_kernels


# --- linear parts -----------------------------------------------------------------------------------
@torch.no_grad()
def compose(first, second):
    """The linear part of `second(first(x))` as one map (biases ignored); NotExact when there is none."""
    first, second = first.linear_part(), second.linear_part()
    if isinstance(first, ChannelAffine) and isinstance(second, ChannelAffine):
        if first.dim != second.dim:
            raise NotExact("per-channel maps along different dims")
        scale = torch.as_tensor(_scale_or_ones(second) * _scale_or_ones(first), dtype=torch.float64)
        return ChannelAffine(scale, None, first.dim)
    if isinstance(second, ChannelAffine):
        return _scale_outputs(first, _checked_scale(second, first))
    if isinstance(first, ChannelAffine):
        return _scale_inputs(second, _checked_scale(first, second))
    if isinstance(first, Linear) and isinstance(second, Linear):
        return Linear(f64(second.weight) @ f64(first.weight))
    if isinstance(first, Conv) and isinstance(second, Conv):
        return _compose_convs(first, second)
    raise NotExact(f"{type(first).__name__} then {type(second).__name__}: different layouts")


def _scale_or_ones(channel: ChannelAffine) -> Tensor | float:
    return f64(channel.scale) if channel.scale is not None else 1.0


def _checked_scale(channel: ChannelAffine, layer) -> Tensor:
    wanted = 1 if isinstance(layer, Conv) else -1
    if channel.dim != wanted:
        raise NotExact(f"per-channel map along dim {channel.dim} next to a {type(layer).__name__} (channels on {wanted})")
    if channel.scale is None:
        return torch.ones((), dtype=torch.float64)
    return f64(channel.scale)


def _scale_outputs(layer, scale: Tensor):
    weight = f64(layer.weight)
    return replace(layer, weight=weight * scale.reshape(-1, *([1] * (weight.dim() - 1))))


def _scale_inputs(layer, scale: Tensor):
    weight = f64(layer.weight)
    if isinstance(layer, Linear):
        return Linear(weight * scale.reshape(1, -1))
    out_channels, per_group = weight.shape[:2]
    groups = layer.groups
    scale = scale.expand(per_group * groups) if scale.dim() == 0 else scale
    # Input channel i_local of output channel o is channel group(o) * per_group + i_local.
    per_output = scale.reshape(groups, 1, per_group).expand(groups, out_channels // groups, per_group)
    return replace(layer, weight=weight * per_output.reshape(out_channels, per_group, 1, 1))


def _is_pointwise(conv: Conv) -> bool:
    return conv.kernel == (1, 1) and conv.stride == (1, 1) and conv.padding == (0, 0)


def _compose_convs(first: Conv, second: Conv) -> Conv:
    if first.dilation != (1, 1) or second.dilation != (1, 1):
        raise NotExact("dilated convolutions are not merged")
    if any(second.padding):
        if not _is_pointwise(first):
            raise NotExact(f"the second convolution zero-pads the intermediate map (padding {second.padding}) after "
                           f"a {first.kernel[0]}x{first.kernel[1]} stride {first.stride} convolution: "
                           f"not one convolution")
        stride, padding = second.stride, second.padding
    else:
        stride = (first.stride[0] * second.stride[0], first.stride[1] * second.stride[1])
        padding = first.padding
    weight, groups = compose_kernels(first.weight, first.groups, second.weight, second.groups, first.stride)
    return Conv(weight, None, stride, padding, (1, 1), groups)


# --- residuals and constants ------------------------------------------------------------------------
@torch.no_grad()
def add_identity(layer):
    """`x + layer(x)` as one map. Needs the layer to keep the shape: a square linear layer, or a convolution
    with as many output as input channels, stride 1, no dilation and 'same' padding (k = 2 p + 1)."""
    if isinstance(layer, Linear):
        out_features, in_features = layer.weight.shape
        if out_features != in_features:
            raise NotExact(f"residual around a {in_features}->{out_features} linear layer")
        return replace(layer, weight=f64(layer.weight) + torch.eye(in_features, dtype=torch.float64))
    if isinstance(layer, ChannelAffine):
        return replace(layer, scale=_scale_or_ones(layer) + 1.0)
    out_channels, per_group = layer.weight.shape[:2]
    kernel, padding = layer.kernel, layer.padding
    if out_channels != per_group * layer.groups or layer.stride != (1, 1) or layer.dilation != (1, 1) \
            or any(k != 2 * p + 1 for k, p in zip(kernel, padding)):
        raise NotExact(f"residual around a convolution that changes the shape (channels {per_group * layer.groups}->"
                       f"{out_channels}, kernel {kernel}, stride {layer.stride}, padding {padding})")
    weight = f64(layer.weight).clone()
    channels = torch.arange(out_channels)
    weight[channels, channels % per_group, padding[0], padding[1]] += 1.0
    return replace(layer, weight=weight)


@torch.no_grad()
def linear_composition(ops: Sequence):
    """The linear part of applying `ops` in order, as one map; NotExact when there is none."""
    linear = ops[0].linear_part()
    for op in ops[1:]:
        linear = compose(linear, op)
    return linear


def merged_shape(ops: Sequence):
    """`linear_composition` on meta tensors: the merged layer's kernel shape, groups and geometry (and the
    NotExact refusals) at no arithmetic cost, to decide on MACs before composing any weight."""
    return linear_composition([_on_meta(op) for op in ops])


def _on_meta(op):
    fields = {name: getattr(op, name).to("meta") for name in ("weight", "scale")
              if isinstance(getattr(op, name, None), Tensor)}
    return replace(op.linear_part(), **fields)


@torch.no_grad()
def merge(ops: Sequence, input_shape: Sequence[int]):
    """One map equal to applying `ops` in order to an input of `input_shape` (batch size aside)."""
    linear = linear_composition(ops)
    zeros = torch.zeros((1, *input_shape[1:]), dtype=torch.float64)
    constant = zeros
    for op in ops:
        constant = op(constant)
    if tuple(linear(zeros).shape) != tuple(constant.shape):
        raise NotExact(f"merged map gives shape {tuple(linear(zeros).shape)}, the layers {tuple(constant.shape)}")
    return with_constant(linear, constant)


def with_constant(linear, constant: Tensor):
    """Attach the value at zero `constant` to a linear part: a plain bias when it is the same at every
    position, else (convolutions only) a bias map. An all-zero constant adds nothing."""
    if not torch.any(constant):
        return linear
    dim = 1 if isinstance(linear, Conv) else -1 if isinstance(linear, Linear) else linear.dim
    channels_first = constant.movedim(dim, 0).reshape(constant.shape[dim], -1)
    per_channel = channels_first[:, :1]
    # Interior positions sum the same terms in the same order, so a constant map is constant to within
    # float64 rounding; far below what float32 weights can represent.
    tolerance = 1e-12 * max(1.0, float(channels_first.abs().max()))
    if bool(((channels_first - per_channel).abs() <= tolerance).all()):
        bias = per_channel.reshape(-1)
        if isinstance(linear, ChannelAffine):
            return replace(linear, shift=bias)
        return replace(linear, bias=bias)
    if not isinstance(linear, Conv):
        raise NotExact("the constant part varies over positions, which only a convolution's bias map can hold")
    return replace(linear, bias_map=constant)
