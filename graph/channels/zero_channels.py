"""Where a group's zero-weight channels stop being zero, and whether that makes their removal inexact.

A group is exact when its zero-weight channels can go without changing outputs. Their activations are zero
after the layers that make them; an operator with f(0) != 0 (sigmoid gives 0.5, `x + 1`, `exp`,
`clamp(min=0.1)`, adding a map broadcast over the channels) makes them nonzero from there on. That is harmless
where a weight of the group reads them (its zero slice drops them: a squeeze-excitation gate multiplies
zeros, a convolution's zero input columns) and inexact where something without such a weight does (a sum over
the channels, a product of two activations: linear attention's elu + 1).

Each node's output gets the dims along which zero channels may be nonzero. Element-wise operators (and the
user's) are judged by running them on a tiny stand-in of their operands (graph/channels/zero_stand_in.py);
layers, products, views and reductions by where their weights and dims go.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.utils._pytree as pytree

from prunefx.graph.channels import rules_dims as dims
from prunefx.graph.channels import rules_elementwise as elementwise
from prunefx.graph.channels import rules_layers as layers
from prunefx.graph.channels import rules_reshape as reshape
from prunefx.graph.channels.labels import FIXED, LabelSpace, distinct
from prunefx.graph.channels.zero_stand_in import COPIES, keeps_zero, operator_name

ALL = "all"  # any dim may be nonzero (after an operator that moves dims around)

ELEMENT_WISE = {elementwise.same_as_input, elementwise.broadcast, elementwise.constant_pad}
# They move values to other places and dims: what was nonzero stays nonzero, somewhere.
MOVING = {dims.cat, dims.chunk, dims.expand, dims.flatten, dims.getitem, dims.index, dims.permute, dims.repeat,
          dims.repeat_interleave, dims.select, dims.slice_, dims.split, dims.split_with_sizes, dims.squeeze,
          dims.stack, dims.t, dims.transpose, dims.unbind, dims.unsqueeze, elementwise.native_dropout,
          elementwise.pooling, elementwise.roll, reshape.view, reshape.reshape_as, layers.pixel_shuffle,
          layers.pixel_unshuffle}
# They lay the same elements out in another shape: dims map by their sizes.
RESHAPES = {reshape.view, reshape.reshape_as, dims.flatten}
# Every other shipped rule's operator gives zeros where what it reads is zero (reductions, softmax's dims aside).
SHIPPED = MOVING | RESHAPES | {elementwise.reduction, elementwise.softmax, layers.matmul, layers.attention,
                               layers.einsum}



class NonzeroChannels:
    """The dims along which each node's zero-weight channels may be nonzero; marks inexact in `space` the labels
    read where that matters."""

    def __init__(self, space: LabelSpace, labels_of: Callable[[torch.fx.Node], object]):
        self.space, self.labels_of = space, labels_of
        self.nonzero: dict[torch.fx.Node, frozenset[int] | str] = {}

    def after(self, node: torch.fx.Node, rule) -> None:
        """Record what `node` (run by `rule`) gives, once its labels are known. An operator this cannot follow
        makes what it reads inexact and its output nonzero everywhere: never an error of the analysis."""
        try:
            found = self._found(node, rule)
        except Exception:
            for arg in node.all_input_nodes:
                if self.nonzero.get(arg):
                    self._inexact(arg, ALL)
            found = ALL
        found = self._prunable(node, found)
        if found:
            self.nonzero[node] = found

    def _prunable(self, node: torch.fx.Node, found) -> frozenset[int] | str:
        """Only dims that may lose channels count (a fixed dim, batch, space, tokens, never does): `found`
        among them, ALL made concrete; ALL kept for an operator giving several tensors."""
        labels = self.labels_of(node)
        if not found or not _flat(labels):
            return found
        dims = range(len(labels)) if found == ALL else found
        return frozenset(dim for dim in dims if dim < len(labels) and labels[dim].any())

    def _found(self, node: torch.fx.Node, rule) -> frozenset[int] | str:
        read = [arg for arg in node.all_input_nodes if self.nonzero.get(arg)]
        if rule in ELEMENT_WISE:
            return frozenset() if operator_name(node) in COPIES and not read else self._judged(node)
        if rule is elementwise.softmax:  # a zero slice becomes 1/N along the normalised dim
            rank = len(_shape(node))
            return frozenset(range(rank)) - {node.args[1] % rank}
        if rule in (layers.convolution, layers.linear, layers.addmm, layers.batch_norm, layers.group_norm,
                    layers.layer_norm):
            source = node.args[1] if rule is layers.addmm else node.args[0]
            if any(arg is not source for arg in read):  # a weight made nonzero (an activation, sigmoid(W))
                for arg in read:
                    self._inexact(arg, ALL)
                return ALL
            return self._through_weights(node, rule)
        if rule is layers.matmul:
            return self._product(node)
        if rule is layers.attention:
            return self._attention(node)
        if rule in (dims.expand, dims.repeat):  # a dim grown from one element repeats a value that need not be 0
            grown = {dim for dim, size in enumerate(_shape(node)) if _grown(node, dim)}
            return frozenset(grown) | (self._moved(node) if read else frozenset())
        if rule in (layers.embedding, layers.recurrent, elementwise.new_tensor):
            return frozenset()
        if not read:  # shipped rules below keep zeros; a rule of the user's is judged like an element-wise one
            if rule in SHIPPED:
                return frozenset()
            return self._judged(node)
        if rule in RESHAPES:
            return self._reshaped(node)
        if rule in (dims.cat, dims.stack):
            return self._joined(node, stacked=rule is dims.stack)
        if rule in MOVING:
            return self._moved(node)
        if rule is elementwise.reduction:
            return self._reduced(node)
        for arg in read:  # einsum, an operator of the user's: what it reads counts
            self._inexact(arg, ALL)
        return frozenset()

    def _judged(self, node: torch.fx.Node) -> frozenset[int]:
        """The dims along which the stand-in finds the operator's output nonzero (graph/channels/zero_stand_in.py)."""
        return frozenset(dim for dim, size in enumerate(_shape(node) or ()) if size > 1
                         and not keeps_zero(node, dim, self._nonzero_along))

    def _joined(self, node: torch.fx.Node, *, stacked: bool) -> frozenset[int]:
        """cat and stack: each piece's dims keep their places (stack puts a new one in), and the output is
        nonzero along a dim where any piece is."""
        pieces = [piece for piece in node.args[0] if isinstance(piece, torch.fx.Node)]
        rank = len(_shape(node))
        at = (node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)) % rank
        found = set()
        for piece in pieces:
            found |= {dim + 1 if stacked and dim >= at else dim for dim in self._dims(piece)}
        return frozenset(found)

    def _reshaped(self, node: torch.fx.Node) -> frozenset[int]:
        """A view: each run of input dims that becomes a run of output dims (197 x 1 x 2304 -> 197 x 1 x 3 x 768:
        the last dim into the last two) takes its nonzero dims along."""
        source = node.args[0]
        nonzero = self._dims(source)
        found = set()
        for inputs, outputs in _reshape_runs(_shape(source), _shape(node)):
            if nonzero & set(inputs):
                found |= set(outputs)
        return frozenset(found)

    def _moved(self, node: torch.fx.Node) -> frozenset[int] | frozenset[str]:
        """Where an operator that only moves values (a view, a permute, a slice, a cat) puts the nonzero ones:
        the output dims holding the labels of nonzero input dims, and where such labels vanished into new ones
        (a view splitting heads from channels), the new ones. For several outputs, the labels themselves."""
        nonzero_ids = set().union(*(self._ids(arg) for arg in node.all_input_nodes))
        input_ids = set().union(*(_label_ids(self.labels_of(arg)) for arg in node.all_input_nodes))
        labels = self.labels_of(node)
        output_ids = _label_ids(labels)
        new_ids = (output_ids - input_ids) if nonzero_ids - output_ids else set()
        if not _flat(labels):
            return frozenset(f"id:{label}" for label in (nonzero_ids & output_ids) | new_ids)
        return frozenset(dim for dim, dim_labels in enumerate(labels)
                         if _label_ids(dim_labels) & (nonzero_ids | new_ids))

    def _ids(self, arg) -> set[int]:
        """The labels along which `arg` may be nonzero."""
        found = self.nonzero.get(arg)
        if not found:
            return set()
        labels = self.labels_of(arg)
        if not _flat(labels) or found == ALL:
            named = {int(item[3:]) for item in found if isinstance(item, str) and item.startswith("id:")}
            return named if found != ALL else _label_ids(labels)
        return set().union(*(_label_ids(labels[dim]) for dim in found))

    def _dims(self, arg) -> set[int]:
        """The dims along which `arg` may be nonzero (none for a weight, a literal, a tensor still zero)."""
        found = self.nonzero.get(arg) if isinstance(arg, torch.fx.Node) else None
        if not found:
            return set()
        if found == ALL or not _flat(self.labels_of(arg)):
            return set(range(len(_shape(arg) or ())))
        return set(found)

    def _through_weights(self, node: torch.fx.Node, rule) -> frozenset[int]:
        """A layer whose weights are the group's along the dim it reads (a conv's input channels, a linear's
        features, a norm's channels) drops the nonzero values there; along its other dims they go on, and a
        bias or a mean subtracted there (a linear over the length, a batch norm's statistics) makes a zero
        slice nonzero."""
        source, rank = node.args[0], len(_shape(node))
        if rule is layers.addmm:
            source = node.args[1]
        weighted = {rank - 1} if rule in (layers.linear, layers.addmm) else {1}
        if rule is layers.layer_norm:
            weighted = set(range(rank - len(node.args[1]), rank))
        affine = rule in (layers.convolution, layers.linear, layers.addmm) or _affine(node)
        shifted = rule not in (layers.convolution, layers.linear, layers.layer_norm)  # a mean or an addmm's bias
        if rule in (layers.convolution, layers.linear):
            shifted = layers._arg(node, 2, "bias") is not None
        elif rule is layers.layer_norm:  # a zero slice normalises to zero: only a bias moves it
            shifted = layers._arg(node, 3, "bias") is not None
        carried = self._dims(source) - (weighted if affine else set())
        if shifted:  # a zero slice along any dim but the weighted ones comes out as the bias or the shift
            carried |= set(range(rank)) - weighted
        return frozenset(carried)

    def _product(self, node: torch.fx.Node) -> frozenset[int]:
        """a @ b: a contracted dim adds the removed channels in where both sides are nonzero there (where one
        side is zero, its zero slice drops them); a batch dim stays nonzero where both are, a row dim where
        its side is."""
        a, b = node.args[0], node.args[1]
        if not all(isinstance(x, torch.fx.Node) for x in (a, b)):
            raise ValueError("a product with a literal")
        rank_a, rank_b, rank = len(_shape(a)), len(_shape(b)), len(_shape(node))
        if min(rank_a, rank_b) < 2:
            raise ValueError("a product with a vector")
        dims_a, dims_b = self._dims(a), self._dims(b)
        if rank_a - 1 in dims_a and rank_b - 2 in dims_b:
            self._inexact(a, {rank_a - 1})
            self._inexact(b, {rank_b - 2})
        found = set()
        if rank_a - 2 in dims_a:
            found.add(rank - 2)
        if rank_b - 1 in dims_b:
            found.add(rank - 1)
        for dim in range(rank - 2):  # batch dims, right-aligned as broadcasting goes
            in_a, in_b = dim - (rank - rank_a), dim - (rank - rank_b)
            nonzero_a = in_a >= 0 and in_a in dims_a
            nonzero_b = in_b >= 0 and in_b in dims_b
            carries_a = in_a >= 0 and _shape(a)[in_a] > 1
            carries_b = in_b >= 0 and _shape(b)[in_b] > 1
            if (nonzero_a or not carries_a) and (nonzero_b or not carries_b) and (nonzero_a or nonzero_b):
                found.add(dim)
        return frozenset(found)

    def _attention(self, node: torch.fx.Node) -> frozenset[int]:
        """softmax(q k^T) v: the scores add the removed head dims in where q and k are both nonzero there; the
        softmax spreads every score, so the output is nonzero where v is (a zero head of v drops it)."""
        q, k, v = node.args[:3]
        dims_q, dims_k, dims_v = self._dims(q), self._dims(k), self._dims(v)
        last = len(_shape(q)) - 1
        if last in dims_q and len(_shape(k)) - 1 in dims_k:
            self._inexact(q, {last})
            self._inexact(k, {len(_shape(k)) - 1})
        rank, rank_v = len(_shape(node)), len(_shape(v))
        return frozenset(dim + rank - rank_v for dim in dims_v if dim + rank - rank_v >= 0)

    def _reduced(self, node: torch.fx.Node) -> frozenset[int] | str:
        """A sum over a nonzero dim adds the removed channels in (a max picks among them); the other nonzero dims
        go on."""
        source = node.args[0]
        found = self.nonzero.get(source)
        if not found:
            return frozenset()
        rank = len(_shape(source))
        if rank == 0:
            return frozenset()
        reduced = elementwise.normalised_dims(node.args[1] if len(node.args) > 1 else node.kwargs.get("dim"), rank)
        keepdim = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
        self._inexact(source, self._dims(source) & set(reduced))
        kept = self._dims(source) - set(reduced)
        return frozenset(kept if keepdim else {dim - sum(r < dim for r in reduced) for dim in kept})

    def _nonzero_along(self, arg: torch.fx.Node, dim: int, rank: int) -> bool:
        found = self.nonzero.get(arg)
        if not found:
            return False
        value = arg.meta.get("val")
        return found == ALL or (dim - (rank - value.dim())) in found

    def _inexact(self, node: torch.fx.Node, found) -> None:
        labels = self.labels_of(node)
        if not isinstance(labels, list):
            return
        for dim in range(len(labels)) if found == ALL else found:
            if labels[dim] is not None:
                self.space.inexact.append(labels[dim])


def _reshape_runs(before: tuple[int, ...], after: tuple[int, ...]) -> list[tuple[list[int], list[int]]]:
    """The smallest runs of dims of `before` and `after` holding the same number of elements, in order."""
    runs, i, j = [], 0, 0
    while i < len(before) or j < len(after):
        inputs, outputs, size_in, size_out = [], [], 1, 1
        if i < len(before):
            inputs.append(i)
            size_in, i = before[i], i + 1
        if j < len(after):
            outputs.append(j)
            size_out, j = after[j], j + 1
        while size_in != size_out:
            if size_in < size_out:
                inputs.append(i)
                size_in, i = size_in * before[i], i + 1
            else:
                outputs.append(j)
                size_out, j = size_out * after[j], j + 1
        runs.append((inputs, outputs))
    return runs


def _grown(node: torch.fx.Node, dim: int) -> bool:
    """Whether the output's `dim` (right-aligned with the input's) was one element in the input and is more."""
    source, out = _shape(node.args[0]), _shape(node)
    own = dim - (len(out) - len(source))
    return out[dim] > 1 and (own < 0 or source[own] == 1)


def _flat(labels) -> bool:
    """Whether `labels` are one tensor's (an array per dim), not several outputs' or none."""
    return isinstance(labels, list) and all(isinstance(dim_labels, np.ndarray) for dim_labels in labels)


def _label_ids(labels) -> set[int]:
    """Every label in `labels` (an array, a tensor's arrays, or several tensors'), FIXED left out."""
    arrays = [leaf for leaf in pytree.tree_leaves(labels) if isinstance(leaf, np.ndarray)]
    return set(distinct(np.concatenate(arrays)).tolist()) - {FIXED} if arrays else set()


def _affine(node: torch.fx.Node) -> bool:
    """A norm with its weight (batch_norm's argument 1, layer_norm's and group_norm's 2)."""
    index = 1 if "batch_norm" in operator_name(node) else 2
    weight = node.args[index] if len(node.args) > index else node.kwargs.get("weight")
    return isinstance(weight, torch.fx.Node)


def _shape(node: torch.fx.Node) -> tuple[int, ...] | None:
    value = node.meta.get("val")
    return tuple(int(size) for size in value.shape) if isinstance(value, torch.Tensor) else None
