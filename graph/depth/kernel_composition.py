"""The kernel of two convolutions applied one after the other (no padding between them), for
graph/depth/affine_merge.py: `K[o, i, u] = sum_c sum_{s1 j + m = u} W2[o, c, j] W1[c, i, m]`, with W2
dilated by the first stride. A 1x1 side is a channel contraction (a batched matrix product); kxk o kxk is
a transposed convolution of the first kernel by the second; mismatched groups go through the dense,
block-diagonal kernels. Pure tensor functions in float64 on the CPU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from prunefx.graph.depth.affine_maps import Tensor, f64


def compose_kernels(first: Tensor, first_groups: int, second: Tensor, second_groups: int,
                    first_stride: tuple[int, int] = (1, 1)) -> tuple[Tensor, int]:
    """Kernel of `conv(conv(x, first), second)` (no padding between them) and its groups."""
    first, second = f64(first), f64(second)
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
