"""Literal sizes in a subgraph made to follow its input's batch (subgraph_module.py, `windows`).

A graph cut from the Program holds the example's sizes. A reshape or expand whose first size is the example's
batch, or a multiple of it (the windows or heads of each image), would fix the batch of every later call; here
it is computed from the input's batch instead. The write-back proves the result on a batch of two inputs.
"""

from __future__ import annotations

import operator

import torch
from torch import fx

# Tensors made with the input's dtype and device but sizes of their own (Swin's shifted-window mask, new_zeros):
# their values do not come from the input, nor does any batch in their sizes.
NEW_FROM_SHAPE = {torch.ops.aten.new_zeros.default, torch.ops.aten.new_ones.default, torch.ops.aten.new_full.default,
                  torch.ops.aten.new_empty.default, torch.ops.aten.new_empty_strided.default}
_RESHAPES = {torch.ops.aten.view.default, torch.ops.aten.reshape.default, torch.ops.aten._unsafe_view.default,
             torch.ops.aten.expand.default}


def batch_of(node: fx.Node) -> int | None:
    """The first size of the node's example value, or None."""
    value = node.meta.get("val")
    return int(value.shape[0]) if isinstance(value, torch.Tensor) and value.dim() else None


def follow_input_batch(graph: fx.Graph, node: fx.Node, original: fx.Node, x: fx.Node,
                       batches: tuple[int | None, int | None], from_input: set[fx.Node], windows: bool) -> bool:
    """A reshape or expand to literal sizes (the graph holds the example's) made to follow the input's batch: a
    first size equal to the example's batch, where the tensor's first dim is that batch too and the tensor is
    computed from the input (`from_input`) or expanded to it (a class token); with `windows`, for a tensor
    computed from the input, a first size that is a multiple of it (B * n: the windows or heads of each image),
    or one that splits the input's batch of windows back into images (B * n -> B, n: a shifted window's mask
    added per image), B a multiple of the Program's batch of images (else it may mix images: no batch of two
    would tell). A reshape of the module's own tensor keeps its sizes (a position table of one row). `batches`:
    the input's and the Program's. Whether it now follows the batch; the write-back proves it on a batch of two."""
    batch, images = batches
    sizes = node.args[1] if node.target in _RESHAPES and len(node.args) > 1 else None
    if batch is None or not isinstance(sizes, (list, tuple)) or not sizes or not isinstance(sizes[0], int) \
            or sizes[0] <= 0:
        return False
    source = original.args[0]
    value = source.meta.get("val") if isinstance(source, fx.Node) else None
    computed = source in from_input
    batch_first = isinstance(value, torch.Tensor) and value.dim() and value.shape[0] == batch == sizes[0] \
        and (computed or node.target is torch.ops.aten.expand.default)
    if not batch_first and not (windows and computed):
        return False
    if sizes[0] % batch == 0:
        factor, scale = sizes[0] // batch, operator.mul
    elif images and sizes[0] % images == 0 and _splits_batch(sizes, value, batch):
        factor, scale = batch // sizes[0], operator.floordiv
    else:
        return False
    with graph.inserting_before(node):
        size = graph.call_function(torch.ops.aten.sym_size.int, (x, 0))
        if factor != 1:
            size = graph.call_function(scale, (size, factor))
    node.args = (node.args[0], [size, *sizes[1:]], *node.args[2:])
    return True


def _splits_batch(sizes, value, batch: int) -> bool:
    """Whether a view cuts a tensor's first dim, the input's batch, in two: (batch, ...) -> (a, batch / a, ...)."""
    first = value.shape[0] if isinstance(value, torch.Tensor) and value.dim() else None
    return first == batch and len(sizes) > 1 and batch % sizes[0] == 0 and sizes[0] * sizes[1] == batch
