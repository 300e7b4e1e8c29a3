"""INT8 fake quantization on the graph, in TensorRT's explicit-quantization form.

Weights: symmetric INT8 per output channel (scale max|w| / 127); activations: symmetric INT8 per tensor
(scale amax / 127, amax from calibration data, graph/int8/ranges.py). Quantizers sit on the inputs of
convolutions, transposed convolutions, linear layers, matmuls, residual adds and average pools, one per
activation however many layers read it; they are torch's own fake-quantize operators, which the ONNX exporter
turns into Q/DQ pairs. Why adds and pools get them: see docs/algorithms.md, 'quantize_int8'.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

from prunefx.graph.attributes import free_name, get_tensor, set_tensor, users_of_tensor
from prunefx.graph.channels.rules import channel_rule, same_as_input
from prunefx.graph.operators import CONVOLUTIONS, TRANSPOSED_CONVOLUTIONS, transposed_groups

aten = torch.ops.aten
QMIN, QMAX = -128, 127
LEVELS = 127                     # symmetric: the scale maps amax to 127
FAKE_QUANT_OPS = (aten.fake_quantize_per_tensor_affine.default, aten.fake_quantize_per_channel_affine.default)

_MATMULS = {aten.matmul.default, aten.mm.default, aten.bmm.default}
_AVERAGE_POOLS = {aten.adaptive_avg_pool1d.default, aten.adaptive_avg_pool2d.default,
                  aten.adaptive_avg_pool3d.default, aten.avg_pool1d.default, aten.avg_pool2d.default,
                  aten.avg_pool3d.default, aten._adaptive_avg_pool2d.default, aten._adaptive_avg_pool3d.default}


def _short_name(target) -> str:
    """'aten.conv2d.default' -> 'conv2d': the name users give to keep an operator in float."""
    return str(target).split(".")[1] if str(target).startswith("aten.") else str(target)


# What `skip_operators` may name: every operator a QuantTarget can have.
QUANTIZABLE_OPERATORS = frozenset(map(_short_name, (
    *CONVOLUTIONS, *TRANSPOSED_CONVOLUTIONS, *_MATMULS, *_AVERAGE_POOLS, aten.linear.default,
    aten.add.Tensor, aten.add_.Tensor, aten.mean.dim)))


@dataclass
class QuantTarget:
    """A layer to quantize: its activation inputs (per-tensor quantizers) and its weight (per channel)."""

    layer: torch.fx.Node
    operator: str
    activations: tuple[torch.fx.Node, ...]
    weight: torch.fx.Node | None = None
    weight_axis: int = 0
    kind: str = "layer"   # layer (conv, linear, matmul) | add (residual) | pool (average pool)


def _attr(node) -> bool:
    return isinstance(node, torch.fx.Node) and node.op == "get_attr"


def _activation(node) -> bool:
    value = node.meta.get("val") if isinstance(node, torch.fx.Node) else None
    return (isinstance(node, torch.fx.Node) and node.op != "get_attr" and isinstance(value, torch.Tensor)
            and value.is_floating_point())


def operator_name(node: torch.fx.Node) -> str:
    return _short_name(node.target)


def _target(node: torch.fx.Node) -> QuantTarget | str | None:
    """The QuantTarget of `node`, a reason (str) why a quantizable layer is left in float, or None."""
    if node.op != "call_function":
        return None
    target, args = node.target, node.args
    name = operator_name(node)
    if target in CONVOLUTIONS or target in TRANSPOSED_CONVOLUTIONS or target is aten.linear.default:
        groups = transposed_groups(node)
        transposed = groups is not None
        if transposed and groups != 1:
            return "grouped transposed convolution: no per-output-channel axis for its weight"
        if not _attr(args[1]):
            return "its weight is computed in the graph, not a stored tensor"
        if not _activation(args[0]):
            return "its input is not a floating-point tensor"
        return QuantTarget(node, name, (args[0],), args[1], 1 if transposed else 0)
    if target in (aten.add.Tensor, aten.add_.Tensor) and len(args) == 2 and all(_activation(arg) for arg in args) \
            and args[0].meta["val"].shape == args[1].meta["val"].shape and args[0].meta["val"].dim() >= 3:
        # a residual add: both inputs quantized, so TensorRT fuses it into the convolution before it and ONNX
        # Runtime runs the convolution and the add on integers (no broadcasting: bias adds are not residuals)
        return QuantTarget(node, name, (args[0], args[1]), kind="add")
    if _average_pool(node):
        # its input quantized, so the convolution (and its ReLU) before the pool is an integer unit too
        return QuantTarget(node, name, (args[0],), kind="pool")
    if target in _MATMULS:
        left, right = args[0], args[1]
        if _attr(left):
            return "its first operand is a stored tensor"
        if not _activation(left) or not (_activation(right) or _attr(right)):
            return "its operands are not floating-point tensors"
        if _attr(right):  # x @ W: W is [..., in, out], output channels on the last axis
            return QuantTarget(node, name, (left,), right, get_tensor_dim(right) - 1)
        return QuantTarget(node, name, (left, right))
    return None


def _average_pool(node: torch.fx.Node) -> bool:
    """An average pool over the spatial axes of a float [N, C, *spatial] activation: an (adaptive) average
    pool, or a mean of a 4-D or 5-D tensor whose reduced dims are all spatial (not over channels)."""
    args = node.args
    if not args or not _activation(args[0]) or args[0].meta["val"].dim() < 3:
        return False
    if node.target in _AVERAGE_POOLS:
        return True
    rank = args[0].meta["val"].dim()
    if node.target is not aten.mean.dim or len(args) < 2 or args[1] is None or rank < 4:
        return False  # a 3-D mean may be over the features of [N, tokens, features]: not a pool
    dims = [args[1]] if isinstance(args[1], int) else list(args[1])
    return bool(dims) and all(2 <= (dim % rank) for dim in dims)


def get_tensor_dim(node: torch.fx.Node) -> int:
    return node.meta["val"].dim() if isinstance(node.meta.get("val"), torch.Tensor) else 2


def find_targets(graph: torch.fx.Graph) -> tuple[list[QuantTarget], dict[str, str]]:
    """(layers that can be quantized, {layer name: reason} for those that cannot)."""
    targets, refused = [], {}
    for node in graph.nodes:
        found = _target(node)
        if isinstance(found, str):
            refused[node.name] = found
        elif found is not None:
            targets.append(found)
    return targets, refused


def has_fake_quant(graph: torch.fx.Graph) -> bool:
    return any(node.op == "call_function" and node.target in FAKE_QUANT_OPS for node in graph.nodes)


# ---- dependency analysis (graph/channels/rules.py): what rebatch and channel removal read -------------

# a per-tensor quantizer is element-wise: output index i is input index i (batch items stay independent)
channel_rule(aten.fake_quantize_per_tensor_affine.default)(same_as_input)


@channel_rule(aten.fake_quantize_per_channel_affine.default)
def _per_channel_rule(ctx, node):
    """Element-wise too; the scale and zero-point vectors shrink with the weight's channel axis."""
    labels = list(ctx.labels(node.args[0]))
    axis = node.args[3]
    for vector in node.args[1:3]:
        ctx.space.tie(labels[axis], ctx.labels(vector)[0])
    return labels


# ---- scales --------------------------------------------------------------------------------------

def channel_amax(weight: torch.Tensor, axis: int) -> torch.Tensor:
    """max |w| over every dim but `axis`: one value per output channel."""
    moved = weight.detach().abs().movedim(axis, 0)
    return moved.reshape(moved.shape[0], -1).amax(dim=1)


def scale_of(amax: torch.Tensor | float) -> torch.Tensor:
    """amax / 127, never zero. An all-zero channel or tensor quantizes to 0 exactly at any scale: it gets that of
    a range of +-1, not the smallest float, which would take the INT32 bias codes of the layer reading it
    (bias / (s_x * s_w)) past their range."""
    amax = torch.as_tensor(amax, dtype=torch.float32)
    amax = torch.where(amax > 0, amax, torch.ones_like(amax))
    return torch.clamp(amax / LEVELS, min=torch.finfo(torch.float32).tiny * 2 ** 24)


def fake_quantize(x: torch.Tensor, scale: torch.Tensor | float, axis: int | None = None) -> torch.Tensor:
    """x through an INT8 quantizer: per channel along `axis`, else per tensor (same ops as the graph)."""
    if axis is None:
        return torch.fake_quantize_per_tensor_affine(x, float(scale), 0, QMIN, QMAX)
    scale = torch.as_tensor(scale, dtype=torch.float32)
    return torch.fake_quantize_per_channel_affine(x, scale, torch.zeros_like(scale, dtype=torch.int32), axis,
                                                  QMIN, QMAX)


# ---- rewriting ------------------------------------------------------------------------------------

def quantize_weight(module: torch.fx.GraphModule, target: QuantTarget) -> torch.fx.Node:
    """Put a per-channel quantizer between the layer and its weight; its scales are stored beside the weight
    (`<weight>_quant_scale`, `<weight>_quant_zero_point`) so they are saved with the Program."""
    graph, layer, weight = module.graph, target.layer, target.weight
    values = get_tensor(module, weight.target)
    amax = channel_amax(values, target.weight_axis)
    # Snap the stored weight onto its INT8 grid: the Program computes the same (fq(fq(W)) = fq(W)), and the
    # ONNX lowering's W / scale is then an integer up to float rounding, so both sides hold the same INT8.
    # Not a weight another layer also reads (one kept in float): it would read the rounded values.
    if all(user is layer for user in users_of_tensor(module, weight.target)):
        with torch.no_grad():
            values.copy_(fake_quantize(values, scale_of(amax), target.weight_axis))
    stem = weight.target.replace(".", "_")
    scale_name, zero_name = free_name(module, f"{stem}_quant_scale"), free_name(module, f"{stem}_quant_zero_point")
    set_tensor(module, scale_name, scale_of(amax), parameter=False)
    set_tensor(module, zero_name, torch.zeros(amax.shape, dtype=torch.int32, device=amax.device), parameter=False)
    with graph.inserting_before(layer):
        scale, zero = graph.get_attr(scale_name), graph.get_attr(zero_name)
        quantized = graph.call_function(aten.fake_quantize_per_channel_affine.default,
                                        (weight, scale, zero, target.weight_axis, QMIN, QMAX))
    layer.replace_input_with(weight, quantized)
    return quantized


def quantize_activation(graph: torch.fx.Graph, source: torch.fx.Node, amax: float,
                        layers: Iterable[torch.fx.Node]) -> torch.fx.Node:
    """One per-tensor quantizer on `source`, read by `layers` (its other users keep the float tensor). It is
    placed just before the first of them, so it never lands among the graph's placeholders."""
    layers = list(layers)
    order = {node: index for index, node in enumerate(graph.nodes)}
    with graph.inserting_before(min(layers, key=order.__getitem__)):
        quantized = graph.call_function(aten.fake_quantize_per_tensor_affine.default,
                                        (source, float(scale_of(amax)), 0, QMIN, QMAX))
    for layer in layers:
        layer.replace_input_with(source, quantized)
    return quantized
