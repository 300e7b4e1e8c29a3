"""The affine maps that graph/depth/affine_merge.py composes: `Conv` (a 2-D convolution, its bias and an
optional [1, O, H, W] bias map), `Linear` (`x @ W.T + b` over the last dim) and `ChannelAffine`
(`x * scale + shift` per channel, an eval batch norm or a layer scale), each callable on a tensor and
able to drop its constant part (`linear_part`); and the refusal, `NotExact`.
All arithmetic is float64 on the CPU (`f64`); callers cast results back to their dtype and device.
"""

from __future__ import annotations

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


def f64(tensor: Tensor) -> Tensor:
    """float64 on the CPU (meta tensors stay meta): the algebra never runs on, or mixes, accelerators;
    callers move results back to their model's device."""
    return tensor.to(dtype=torch.float64) if tensor.is_meta else tensor.to(device="cpu", dtype=torch.float64)


@torch.no_grad()
def batch_norm_affine(gamma: Tensor | None, beta: Tensor | None, mean: Tensor, var: Tensor, eps: float,
                      dim: int) -> ChannelAffine:
    """The eval-mode batch norm `(x - mean) / sqrt(var + eps) * gamma + beta` as scale and shift."""
    scale = 1.0 / torch.sqrt(f64(var) + eps)
    if gamma is not None:
        scale = scale * f64(gamma)
    shift = -f64(mean) * scale
    if beta is not None:
        shift = shift + f64(beta)
    return ChannelAffine(scale, shift, dim)
