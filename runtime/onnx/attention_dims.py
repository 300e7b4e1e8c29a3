"""A copy of an ExportedProgram whose attention runs on 4-D tensors, for the dynamo ONNX exporter.

torch.onnx translates `scaled_dot_product_attention` only on (batch, heads, tokens, dim) inputs and refuses any
other rank ("only 4D query, key, and value are supported"), so a model that calls it on 5-D or 6-D tensors
(Twins' locally grouped attention: batch, window rows, window columns, heads, tokens, dim) or on 3-D ones fell
back to the TorchScript exporter. Attention treats every dimension before the last two as independent batches:
folding them into two and unfolding the result computes the same values, in one reshape each way.
"""

from __future__ import annotations

import copy
import math

import torch

_ATTENTION = torch.ops.aten.scaled_dot_product_attention.default
_RESHAPE = torch.ops.aten.reshape.default
_EXPAND = torch.ops.aten.expand.default


def attention_in_four_dims(exported: torch.export.ExportedProgram) -> torch.export.ExportedProgram:
    """`exported` itself when every attention is 4-D (or cannot be folded), otherwise a copy of it (graph only: the
    weights are shared) whose other attentions run on their inputs folded to 4-D. `exported` is never changed."""
    if not any(_foldable(node) for node in exported.graph.nodes):
        return exported
    module = copy.deepcopy(exported.graph_module)
    for node in list(module.graph.nodes):
        if _foldable(node):
            _fold(module.graph, node)
    module.recompile()
    return exported._update(module, exported.graph_signature)  # as contiguous_before_reshapes makes its copy


def _value(argument) -> torch.Tensor | None:
    value = argument.meta.get("val") if isinstance(argument, torch.fx.Node) else None
    return value if isinstance(value, torch.Tensor) else None


def _mask(node: torch.fx.Node):
    return node.args[3] if len(node.args) > 3 else node.kwargs.get("attn_mask")


def _foldable(node: torch.fx.Node) -> bool:
    """An attention on 3-D or 5-D and up inputs of static shapes whose leading dimensions agree (no broadcast
    between query, key and value, no grouped-query heads), with no mask or one that broadcasts to them."""
    if node.op != "call_function" or node.target is not _ATTENTION or node.kwargs.get("enable_gqa"):
        return False
    values = [_value(argument) for argument in node.args[:3]]
    if any(value is None for value in values) or values[0].dim() == 4 or values[0].dim() < 3:
        return False
    shapes = [value.shape for value in values]
    if not all(isinstance(size, int) for shape in shapes for size in shape):
        return False  # symbolic sizes: the fold's literal shapes would pin them
    if len({len(shape) for shape in shapes}) != 1 or len({tuple(shape[:-2]) for shape in shapes}) != 1:
        return False
    mask = _mask(node)
    if mask is None:
        return True
    mask_value = _value(mask)
    if mask_value is None or not all(isinstance(size, int) for size in mask_value.shape):
        return False
    try:
        torch.broadcast_shapes(tuple(mask_value.shape), (*shapes[0][:-1], shapes[1][-2]))
    except RuntimeError:
        return False
    return True


def _four_dims(leading: tuple[int, ...]) -> tuple[int, int]:
    """The two batch dimensions standing for `leading`: the last kept as the heads, the others multiplied."""
    return (1, leading[0]) if len(leading) == 1 else (math.prod(leading[:-1]), leading[-1])


def _fold(graph: torch.fx.Graph, attention: torch.fx.Node) -> None:
    query, key, value = attention.args[:3]
    leading = tuple(_value(query).shape[:-2])
    batches = _four_dims(leading)
    with graph.inserting_before(attention):
        folded = [_reshape(graph, node, (*batches, *_value(node).shape[-2:])) for node in (query, key, value)]
        mask = _mask(attention)
        if mask is not None and _value(mask).dim() > 2:  # broadcast over the leading dimensions, then folded
            full = (*leading, *_value(mask).shape[-2:])
            expanded = _call(graph, _EXPAND, (mask, list(full)), _value(mask).expand(full))
            mask = _reshape(graph, expanded, (*batches, *full[-2:]))
    args = (*folded, *((mask,) if len(attention.args) > 3 else ()), *attention.args[4:])
    kwargs = {name: (mask if name == "attn_mask" else argument) for name, argument in attention.kwargs.items()}
    attention.args, attention.kwargs = args, kwargs
    old = _value(attention)
    attention.meta["val"] = old.reshape(*batches, *old.shape[-2:])
    with graph.inserting_after(attention):
        unfolded = _call(graph, _RESHAPE, (attention, list(old.shape)), old)
    attention.replace_all_uses_with(unfolded, delete_user_cb=lambda user: user is not unfolded)


def _reshape(graph: torch.fx.Graph, node: torch.fx.Node, shape: tuple[int, ...]) -> torch.fx.Node:
    return _call(graph, _RESHAPE, (node, list(shape)), _value(node).reshape(shape))


def _call(graph: torch.fx.Graph, target, args: tuple, value: torch.Tensor) -> torch.fx.Node:
    node = graph.call_function(target, args)
    source = args[0]
    node.meta = {key: item for key, item in source.meta.items() if key != "val"}  # its stack trace, module scope
    node.meta["val"] = value
    return node
