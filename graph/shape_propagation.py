"""Shape propagation: every node's `meta['val']` recomputed with fake tensors (no memory, no kernels).

Parameters and buffers stay real tensors (the mode converts them on the fly instead of copying them), so an
in-place update in the graph reaches the real one: a training-mode batch norm's `num_batches_tracked += 1` is
one element, computed for real. Buffers are put back by value: checking or loading a graph never moves its
statistics.

Fake tensors run `aten.batch_norm`, `aten.layer_norm` and `aten.linear` through torch's Python decompositions, a
dozen fake ops each: two thirds of a CNN's propagation. Where their result is certain (a contiguous input, operands
of the sizes the op needs, one device, for a layer norm one dtype) it is made in one step, as the decomposition would make it; anything else
(a size a rewrite got wrong included) goes the decomposition's way and fails as it does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
from torch.fx.passes.fake_tensor_prop import FakeTensorProp

from prunefx.graph.model_state import values_kept

aten = torch.ops.aten


def propagate_shapes(module: torch.fx.GraphModule, inputs: tuple[torch.Tensor, ...]) -> None:
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    with torch.no_grad(), values_kept(module.buffers()):
        _ShortcutProp(module, mode=mode).propagate(*inputs)


class _ShortcutProp(FakeTensorProp):
    """FakeTensorProp with a one-step result for the ops in SHORTCUTS, where that result is certain."""

    def call_function(self, target, args, kwargs):
        shortcut = SHORTCUTS.get(target)
        result = shortcut(*args, **kwargs) if shortcut is not None else None
        return super().call_function(target, args, kwargs) if result is None else result


def _contiguous_fake(tensor: Any) -> bool:
    """A fake tensor of at least 2 dims with the row-major strides of its shape, size-1 dims included (torch keeps
    or recomputes an odd stride there case by case, so such a tensor goes torch's way)."""
    return isinstance(tensor, FakeTensor) and tensor.dim() >= 2 and tensor.stride() == _row_major(tensor.shape)


def _row_major(shape) -> tuple[int, ...]:
    """The strides torch gives a new tensor of `shape` (a size-0 dim counts as 1)."""
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= max(int(size), 1)
    return tuple(reversed(strides))


def _sized(tensor: Any, like: torch.Tensor, shape: tuple[int, ...], same_dtype: bool = False) -> bool:
    """None (an operand the op may leave out), or a tensor of `shape` on `like`'s device (and of its dtype if
    `same_dtype`)."""
    return tensor is None or (isinstance(tensor, torch.Tensor) and tuple(tensor.shape) == shape
                              and tensor.device == like.device and (not same_dtype or tensor.dtype == like.dtype))


def _batch_norm(input, weight, bias, running_mean, running_var, training, *_numerics, **_more):
    """The decomposition computes (input - mean) * invstd * weight + bias in the input's layout and casts it back to
    the input's dtype. In training it divides by (values per channel - 1): one value per channel stays on its path."""
    if not _contiguous_fake(input):
        return None
    channels = (input.shape[1],)
    if not all(_sized(t, input, channels) for t in (weight, bias, running_mean, running_var)):
        return None
    if training and input.numel() <= channels[0]:
        return None
    if not training and (running_mean is None or running_var is None):
        return None
    return input.new_empty(input.shape)


def _linear(input, weight, bias=None):
    """The decomposition multiplies by weight.t() (addmm in 2-D, a folded matmul above): a contiguous result of the
    input's dtype with the last dimension replaced by the weight's rows."""
    if not (_contiguous_fake(input) and isinstance(weight, torch.Tensor) and weight.dim() == 2
            and weight.shape[1] == input.shape[-1] and weight.dtype == input.dtype
            and weight.device == input.device and _sized(bias, input, (weight.shape[0],), same_dtype=True)):
        return None
    return input.new_empty((*input.shape[:-1], weight.shape[0]))


def _layer_norm(input, normalized_shape, weight=None, bias=None, *_numerics, **_more):
    """Normalised over the trailing `normalized_shape` dimensions, scaled and shifted: the input's shape and layout,
    cast back to its dtype."""
    inner = tuple(normalized_shape)
    if not (_contiguous_fake(input) and inner and tuple(input.shape[-len(inner):]) == inner):
        return None
    if not all(_sized(t, input, inner, same_dtype=True) for t in (weight, bias)):  # CUDA has no mixed kernel
        return None
    return input.new_empty(input.shape)


SHORTCUTS: dict[Any, Callable[..., torch.Tensor | None]] = {
    aten.batch_norm.default: _batch_norm,
    aten.linear.default: _linear,
    aten.layer_norm.default: _layer_norm,
}
