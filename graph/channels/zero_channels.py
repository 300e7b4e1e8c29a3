"""Where a group's zero-weight channels stop being zero, and whether that makes their removal inexact.

A group is exact when its zero-weight channels can go without changing outputs. Their activations are zero
after the layers that make them; an operator with f(0) != 0 (sigmoid gives 0.5, `x + 1`, `exp`,
`clamp(min=0.1)`, adding a map broadcast over the channels) makes them nonzero from there on. That is harmless
where a weight of the group reads them (its zero slice drops them: a squeeze-excitation gate multiplies
zeros, a convolution's zero input columns) and inexact where something without such a weight does (a sum over
the channels, a product of two activations: linear attention's elu + 1).

Each node's output gets the dims along which zero channels may be nonzero. Element-wise operators are run on a
tiny stand-in of their operands, rather than listed: operands zero along the dim where they are, the others
(a broadcast map, a mask, operands already nonzero) not.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from prunefx.graph.channels import rules_dims as dims
from prunefx.graph.channels import rules_elementwise as elementwise
from prunefx.graph.channels import rules_layers as layers
from prunefx.graph.channels import rules_reshape as reshape
from prunefx.graph.channels.labels import LabelSpace

ALL = "all"  # any dim may be nonzero (after an operator that moves dims around)

ELEMENT_WISE = {elementwise.same_as_input, elementwise.broadcast, elementwise.constant_pad}
# They move values to other places and dims: what was nonzero stays nonzero, somewhere.
MOVING = {dims.cat, dims.chunk, dims.expand, dims.flatten, dims.getitem, dims.index, dims.permute, dims.repeat,
          dims.repeat_interleave, dims.select, dims.slice_, dims.split, dims.split_with_sizes, dims.squeeze,
          dims.stack, dims.t, dims.transpose, dims.unbind, dims.unsqueeze, elementwise.native_dropout,
          elementwise.pooling, elementwise.roll, elementwise.softmax, reshape.view, reshape.reshape_as,
          layers.pixel_shuffle, layers.pixel_unshuffle}
# They read the channels through their own weights, which are the group's: its zero slices drop what they read.
WEIGHTED = {layers.convolution, layers.linear, layers.addmm, layers.embedding, layers.recurrent}
NORMS = {layers.batch_norm, layers.layer_norm, layers.group_norm}  # zero with their affine weights, else not
# Copies, casts and checks compute nothing (and some would refuse a stand-in of another shape).
_COPIES = {"clone", "contiguous", "detach", "alias", "_to_copy", "to", "type_as", "lift_fresh_copy",
           "_assert_tensor_metadata", "dropout", "dropout_", "feature_dropout", "feature_dropout_", "alpha_dropout",
           "alpha_dropout_", "feature_alpha_dropout", "feature_alpha_dropout_"}


class NonzeroChannels:
    """The dims along which each node's zero-weight channels may be nonzero; marks inexact in `space` the labels
    read where that matters."""

    def __init__(self, space: LabelSpace, labels_of: Callable[[torch.fx.Node], object]):
        self.space, self.labels_of = space, labels_of
        self.nonzero: dict[torch.fx.Node, frozenset[int] | str] = {}

    def after(self, node: torch.fx.Node, rule) -> None:
        """Record what `node` (run by `rule`) gives, once its labels are known."""
        read = [arg for arg in node.all_input_nodes if self.nonzero.get(arg)]
        if rule in ELEMENT_WISE:
            found = frozenset(dim for dim, size in enumerate(_shape(node) or ()) if size > 1
                              and not (_name(node) in _COPIES and not read) and not self._keeps_zero(node, dim))
        elif not read:
            return
        elif rule in MOVING:
            found = ALL
        elif rule in WEIGHTED or (rule is layers.matmul and _reads_a_weight(node)):
            return
        elif rule in NORMS and _affine(node):
            return
        elif rule in NORMS:
            found = ALL
        elif rule is elementwise.reduction:
            found = self._reduced(node, read)
        else:  # a product of activations, attention, an operator of the user's: what it reads counts
            found = frozenset()
            for arg in read:
                self._inexact(arg, self.nonzero[arg])
        if found:
            self.nonzero[node] = found

    def _keeps_zero(self, node: torch.fx.Node, dim: int) -> bool:
        """Whether the node's output is zero along `dim` where its operands carrying `dim` are (the others
        nonzero). An operator the stand-in cannot run is taken not to (inexact is the safe answer)."""
        if _name(node) in _COPIES:
            return not any(self._nonzero_along(arg, dim, len(_shape(node))) for arg in node.all_input_nodes)
        generator = torch.Generator().manual_seed(0)
        rank = len(_shape(node))

        def stand_in(arg: torch.fx.Node):
            value = arg.meta.get("val")
            if not isinstance(value, torch.Tensor):
                raise TypeError("an operand without a known tensor value")
            small = tuple(1 if size == 1 else 2 for size in value.shape)
            if _carries(value, dim, rank) and not self._nonzero_along(arg, dim, rank):
                return torch.zeros(small, dtype=value.dtype)
            if value.dtype == torch.bool:
                return torch.rand(small, generator=generator) < 0.5
            return (torch.rand(small, generator=generator) + 0.5).to(value.dtype)

        try:
            args, kwargs = torch.fx.node.map_arg((node.args, node.kwargs), stand_in)
            result = node.target(*args, **kwargs)
        except Exception:
            return False
        if not isinstance(result, torch.Tensor):
            return False
        result = result.to(torch.float64)
        return not (result.abs().gt(0).any().item() or result.isnan().any().item())

    def _nonzero_along(self, arg: torch.fx.Node, dim: int, rank: int) -> bool:
        found = self.nonzero.get(arg)
        if not found:
            return False
        value = arg.meta.get("val")
        return found == ALL or (dim - (rank - value.dim())) in found

    def _reduced(self, node: torch.fx.Node, read: list[torch.fx.Node]) -> frozenset[int] | str:
        """A sum over a nonzero dim adds the removed channels in; the other nonzero dims go on."""
        source = node.args[0]
        found = self.nonzero.get(source)
        if not found:
            return frozenset()
        rank = len(_shape(source))
        reduced = elementwise.normalised_dims(node.args[1] if len(node.args) > 1 else node.kwargs.get("dim"), rank)
        self._inexact(source, frozenset(range(rank)) if found == ALL else found & set(reduced))
        return ALL

    def _inexact(self, node: torch.fx.Node, found) -> None:
        labels = self.labels_of(node)
        if not isinstance(labels, list):
            return
        for dim in range(len(labels)) if found == ALL else found:
            if labels[dim] is not None:
                self.space.inexact.append(labels[dim])


def _carries(value: torch.Tensor, dim: int, rank: int) -> bool:
    """Whether an operand of an element-wise operator (right-aligned, as broadcasting goes) has `dim` whole."""
    own = dim - (rank - value.dim())
    return 0 <= own < value.dim() and value.shape[own] > 1


def _reads_a_weight(node: torch.fx.Node) -> bool:
    return any(arg.op == "get_attr" for arg in node.all_input_nodes)


def _affine(node: torch.fx.Node) -> bool:
    """A norm with its weight (batch_norm's and layer_norm's argument 1 after the input, group_norm's 2)."""
    index = 2 if "group_norm" in _name(node) else 1 if "batch_norm" in _name(node) else 2
    weight = node.args[index] if len(node.args) > index else node.kwargs.get("weight")
    return isinstance(weight, torch.fx.Node)


def _shape(node: torch.fx.Node) -> tuple[int, ...] | None:
    value = node.meta.get("val")
    return tuple(int(size) for size in value.shape) if isinstance(value, torch.Tensor) else None


def _name(node: torch.fx.Node) -> str:
    target = node.target
    return target._schema.name.removeprefix("aten::") if isinstance(target, torch._ops.OpOverload) else ""
