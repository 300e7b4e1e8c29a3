"""Exact algebra of affine layers: compose convolutions, linear layers and per-channel scales/shifts.

Pure tensor functions, no graph. Three kinds of affine map:
- `Conv`: a 2-D convolution (weight [O, I/g, kh, kw], groups g), its bias, and optionally a constant
  `bias_map` [1, O, H, W] added after it (see below);
- `Linear`: `x @ W.T + b` over the last dim;
- `ChannelAffine`: `x * scale + shift` per channel along dim 1 (NCHW) or -1 (channels last): an eval
  batch norm (`scale = gamma / sqrt(var + eps)`, `shift = beta - mean * scale`), a layer scale, a
  constant per-channel add.

`merge(ops, input_shape)` turns a sequence of them into one map. An affine map is its linear part plus
its value at zero, so the two are computed separately:
- the linear part composes pairwise (`compose`), with the weights only:
  channel then layer scales the layer's input columns, layer then channel its output rows,
  linear then linear is `W2 W1`, and two convolutions contract the channels and compose the kernels,
  `K[o, i, u] = sum_c sum_{s1 j + m = u} W2[o, c, j] W1[c, i, m]` (W2 dilated by the first stride,
  which covers 1x1 o 1x1, kxk o 1x1, 1x1 o kxk, depthwise o pointwise and kxk o kxk);
- the constant part is the original sequence applied to a zero input. Zero padding makes it vary near
  the borders when a bias passes through a padded convolution; then it stays a constant [1, O, H, W]
  tensor (`bias_map`, shapes are static), otherwise it becomes a plain bias.
The linear part of two convolutions is one convolution only when the second pads nothing (then it has
the first's padding, stride s1 s2 and kernel k1 + s1 (k2 - 1)), or the first is a 1x1 of stride 1
without padding (padding commutes with it: the second's geometry); otherwise the zero padding of the
intermediate map is not representable and `compose` raises NotExact with the reason. Dilated
convolutions and mismatched layouts are refused the same way. `add_identity` folds a residual
`x + f(x)` into f when f keeps the shape. `merged_shape` runs the composition on meta tensors, so a
caller can judge the merged layer's cost before paying for its weights.
All arithmetic is float64 on the CPU; callers cast the result back to their dtype and device.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


class NotExact(Exception):
    """The requested merge cannot be written as one layer without changing the outputs."""


@dataclass(frozen=True)
class Conv:
    weight: Tensor
    bias: Tensor | None = None
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    bias_map: Tensor | None = None

    def __call__(self, x: Tensor) -> Tensor:
        bias = None if self.bias is None else self.bias.to(x)
        y = F.conv2d(x, self.weight.to(x), bias, self.stride, self.padding, self.dilation, self.groups)
        return y if self.bias_map is None else y + self.bias_map.to(x)

    @property
    def kernel(self) -> tuple[int, int]:
        return tuple(self.weight.shape[2:])

    def linear_part(self) -> Conv:
        return replace(self, bias=None, bias_map=None)


@dataclass(frozen=True)
class Linear:
    weight: Tensor
    bias: Tensor | None = None

    def __call__(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight.to(x), None if self.bias is None else self.bias.to(x))

    def linear_part(self) -> Linear:
        return replace(self, bias=None)


@dataclass(frozen=True)
class ChannelAffine:
    scale: Tensor | None
    shift: Tensor | None
    dim: int  # 1 (NCHW) or -1 (channels last)

    def __call__(self, x: Tensor) -> Tensor:
        shape = [1] * x.dim()
        shape[self.dim] = -1
        if self.scale is not None:
            x = x * self.scale.to(x).reshape(shape)
        if self.shift is not None:
            x = x + self.shift.to(x).reshape(shape)
        return x

    def linear_part(self) -> ChannelAffine:
        return replace(self, shift=None)


def _f64(tensor: Tensor) -> Tensor:
    """float64 on the CPU (meta tensors stay meta): the algebra never runs on, or mixes, accelerators;
    callers move results back to their model's device."""
    return tensor.to(dtype=torch.float64) if tensor.is_meta else tensor.to(device="cpu", dtype=torch.float64)


@torch.no_grad()
def batch_norm_affine(gamma: Tensor | None, beta: Tensor | None, mean: Tensor, var: Tensor, eps: float,
                      dim: int) -> ChannelAffine:
    """The eval-mode batch norm `(x - mean) / sqrt(var + eps) * gamma + beta` as scale and shift."""
    scale = 1.0 / torch.sqrt(_f64(var) + eps)
    if gamma is not None:
        scale = scale * _f64(gamma)
    shift = -_f64(mean) * scale
    if beta is not None:
        shift = shift + _f64(beta)
    return ChannelAffine(scale, shift, dim)


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
        return Linear(_f64(second.weight) @ _f64(first.weight))
    if isinstance(first, Conv) and isinstance(second, Conv):
        return _compose_convs(first, second)
    raise NotExact(f"{type(first).__name__} then {type(second).__name__}: different layouts")


def _scale_or_ones(channel: ChannelAffine) -> Tensor | float:
    return _f64(channel.scale) if channel.scale is not None else 1.0


def _checked_scale(channel: ChannelAffine, layer) -> Tensor:
    wanted = 1 if isinstance(layer, Conv) else -1
    if channel.dim != wanted:
        raise NotExact(f"per-channel map along dim {channel.dim} next to a {type(layer).__name__} (channels on {wanted})")
    if channel.scale is None:
        return torch.ones((), dtype=torch.float64)
    return _f64(channel.scale)


def _scale_outputs(layer, scale: Tensor):
    weight = _f64(layer.weight)
    return replace(layer, weight=weight * scale.reshape(-1, *([1] * (weight.dim() - 1))))


def _scale_inputs(layer, scale: Tensor):
    weight = _f64(layer.weight)
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


def compose_kernels(first: Tensor, first_groups: int, second: Tensor, second_groups: int,
                    first_stride: tuple[int, int] = (1, 1)) -> tuple[Tensor, int]:
    """Kernel of `conv(conv(x, first), second)` (no padding between them) and its groups."""
    first, second = _f64(first), _f64(second)
    # A 1x1 side makes the composition a channel contraction (einsum, fast); a first 1x1 with a stride
    # before a kxk kernel would dilate that kernel, which only the transposed convolution handles.
    second_is_1x1 = second.shape[2:] == (1, 1)
    first_is_1x1 = first.shape[2:] == (1, 1) and tuple(first_stride) == (1, 1)
    if first_groups == second_groups:
        groups = first_groups
        if second_is_1x1:
            return _contract_after(first, second.reshape(groups, -1, second.shape[1]), groups), groups
        if first_is_1x1:
            return _contract_before(first.reshape(groups, -1, first.shape[1]), second, groups), groups
        return _grouped_composition(first, second, groups, first_stride), groups
    if second_is_1x1 and second_groups == 1:  # grouped or depthwise, then a dense pointwise
        out_channels, groups = second.shape[0], first_groups
        inner = second.reshape(out_channels, groups, -1).transpose(0, 1)  # [g, O, C/g]
        kernel = torch.bmm(inner, first.reshape(groups, inner.shape[2], -1))  # [g, O, I/g * kh * kw]
        kernel = kernel.reshape(groups, out_channels, first.shape[1], *first.shape[2:]).transpose(0, 1)
        return kernel.reshape(out_channels, -1, *first.shape[2:]), 1
    if first_is_1x1 and first_groups == 1:  # dense pointwise, then grouped or depthwise
        groups, per_group = second_groups, second.shape[1]
        return _contract_before(first.reshape(groups, per_group, -1), second, groups), 1
    dense_first, dense_second = dense_kernel(first, first_groups), dense_kernel(second, second_groups)
    return compose_kernels(dense_first, 1, dense_second, 1, first_stride)


def _contract_after(first: Tensor, second: Tensor, groups: int) -> Tensor:
    """Kernel of a kxk convolution `first` then a 1x1 `second` ([g, O/g, C/g]), both with `groups`."""
    per_group, (kh, kw) = second.shape[2], first.shape[2:]
    kernel = torch.bmm(second, first.reshape(groups, per_group, -1))  # [g, O/g, I/g * kh * kw]
    return kernel.reshape(-1, first.shape[1], kh, kw)


def _contract_before(first: Tensor, second: Tensor, groups: int) -> Tensor:
    """Kernel of a 1x1 `first` ([g, C/g, I']) then a kxk `second` ([O, C/g, kh, kw], `groups` groups); I' is
    the first's input channels per group (all of them when only the second is grouped)."""
    out_channels, per_group, kh, kw = second.shape
    taps = second.reshape(groups, out_channels // groups, per_group, kh * kw).transpose(2, 3)
    kernel = torch.bmm(taps.reshape(groups, -1, per_group), first)  # [g, O/g * kh * kw, I']
    kernel = kernel.reshape(groups, out_channels // groups, kh * kw, -1).transpose(2, 3)
    return kernel.reshape(out_channels, -1, kh, kw)


def _grouped_composition(first: Tensor, second: Tensor, groups: int, first_stride) -> Tensor:
    # A transposed convolution of the first kernel (as a batch of images, one per input channel) by the
    # second kernel, dilated by the first stride, sums exactly the products W2[j] W1[m] with s1 j + m = u.
    out_channels, per_group = second.shape[:2]
    images = first.permute(1, 0, 2, 3)  # [I/g, C, k1h, k1w]
    kernel = second.reshape(groups, out_channels // groups, per_group, *second.shape[2:])
    kernel = kernel.permute(0, 2, 1, 3, 4).reshape(groups * per_group, out_channels // groups, *second.shape[2:])
    composed = F.conv_transpose2d(images, kernel, groups=groups, dilation=tuple(first_stride))
    return composed.permute(1, 0, 2, 3).contiguous()


def dense_kernel(weight: Tensor, groups: int) -> Tensor:
    """The block-diagonal dense [O, I, kh, kw] kernel of a grouped convolution."""
    if groups == 1:
        return weight
    out_channels, per_group = weight.shape[:2]
    out_per_group = out_channels // groups
    dense = weight.new_zeros(out_channels, per_group * groups, *weight.shape[2:])
    for group in range(groups):
        rows = slice(group * out_per_group, (group + 1) * out_per_group)
        dense[rows, group * per_group:(group + 1) * per_group] = weight[rows]
    return dense


# --- residuals and constants ------------------------------------------------------------------------
@torch.no_grad()
def add_identity(layer):
    """`x + layer(x)` as one map. Needs the layer to keep the shape: a square linear layer, or a convolution
    with as many output as input channels, stride 1, no dilation and 'same' padding (k = 2 p + 1)."""
    if isinstance(layer, Linear):
        out_features, in_features = layer.weight.shape
        if out_features != in_features:
            raise NotExact(f"residual around a {in_features}->{out_features} linear layer")
        return replace(layer, weight=_f64(layer.weight) + torch.eye(in_features, dtype=torch.float64))
    if isinstance(layer, ChannelAffine):
        return replace(layer, scale=_scale_or_ones(layer) + 1.0)
    out_channels, per_group = layer.weight.shape[:2]
    kernel, padding = layer.kernel, layer.padding
    if out_channels != per_group * layer.groups or layer.stride != (1, 1) or layer.dilation != (1, 1) \
            or any(k != 2 * p + 1 for k, p in zip(kernel, padding)):
        raise NotExact(f"residual around a convolution that changes the shape (channels {per_group * layer.groups}->"
                       f"{out_channels}, kernel {kernel}, stride {layer.stride}, padding {padding})")
    weight = _f64(layer.weight).clone()
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
