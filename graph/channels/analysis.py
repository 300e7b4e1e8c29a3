"""Dependency analysis ("combing"): which channels of which tensors must be removed together.

Labels are propagated through the graph by the rules in channel_rules.py; tied labels are joined
into classes (connected components); a class is one removable channel (every index of every tensor
that must go with it). Classes touching the same tensor dims form a *group* (the width of a layer,
a residual stream, the heads of an attention block). Labels pinned by an operator without a rule
are not removable, and the operator is reported against the tensors it blocked.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.utils._pytree as pytree
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from prunefx.graph.channels.factor_slices import FactorSlices
from prunefx.graph.channels.labels import FIXED, Grid, LabelSpace, Member, distinct
from prunefx.graph.channels.rules import RULES
from prunefx.graph.channels.zero_channels import NonzeroChannels


class _Context:
    def __init__(self, module: torch.fx.GraphModule):
        self.space = LabelSpace()
        self.node_labels: dict[torch.fx.Node, object] = {}
        self.module = module
        self.nonzero = NonzeroChannels(self.space, self.labels)  # where zero-weight channels stop being zero

    def labels(self, arg):
        return self.node_labels.get(arg) if isinstance(arg, torch.fx.Node) else None

    @staticmethod
    def shape(arg):
        value = arg.meta.get("val") if isinstance(arg, torch.fx.Node) else None
        return tuple(int(s) for s in value.shape) if isinstance(value, torch.Tensor) else None

    def block(self, labels: np.ndarray, node: torch.fx.Node, reason: str) -> None:
        self.space.pin(labels, node=node.name, operator=str(node.target), reason=reason)


def _tensor_leaves(value):
    return [leaf for leaf in pytree.tree_leaves(value) if isinstance(leaf, np.ndarray)]


def _unknown_operator(ctx: _Context, node: torch.fx.Node, reason: str = "no channel rule for this operator"):
    for arg in pytree.tree_leaves((node.args, node.kwargs)):
        for labels in _tensor_leaves(ctx.labels(arg)):
            ctx.block(labels, node, reason)
    value = node.meta.get("val")
    fixed = lambda v: [ctx.space.fixed(int(s)) for s in v.shape] if isinstance(v, torch.Tensor) else None  # noqa: E731
    return [fixed(v) for v in value] if isinstance(value, (list, tuple)) else fixed(value)


def _propagate(ctx: _Context, kept: set[str], free_batch: bool = False) -> None:
    for node in ctx.module.graph.nodes:
        shape = ctx.shape(node)
        if node.op == "placeholder":
            ctx.node_labels[node] = _input_labels(ctx, shape, free_batch)
        elif node.op == "get_attr":
            ctx.node_labels[node] = _attribute_labels(ctx, node, shape)
        elif node.op == "call_function":
            rule = RULES.get(node.target)
            try:
                ctx.node_labels[node] = rule(ctx, node) if rule else _unknown_operator(ctx, node)
            except Exception as error:  # a rule met a form it does not handle: block, never guess
                ctx.node_labels[node] = _unknown_operator(ctx, node, f"unsupported form ({error})")
            ctx.nonzero.after(node, rule)
        elif node.op == "output":
            for output in pytree.tree_leaves(node.args):
                dims = ctx.labels(output)
                for labels in _tensor_leaves(dims[1:] if free_batch and isinstance(dims, list) else dims):
                    ctx.space.tie(labels, ctx.space.fixed(labels.size))
        if node.name in kept:
            for labels in _tensor_leaves(ctx.node_labels.get(node)):
                ctx.block(labels, node, "kept by the user")


def _input_labels(ctx: _Context, shape, free_batch: bool):
    """Graph inputs are fixed, except their batch dim (dim 0) when the caller asks to resize the batch."""
    if shape is None:
        return None
    if free_batch and shape:
        return [ctx.space.fresh(shape[0])] + [ctx.space.fixed(s) for s in shape[1:]]
    return [ctx.space.fixed(s) for s in shape]


def _attribute_labels(ctx: _Context, node: torch.fx.Node, shape) -> list[np.ndarray]:
    if shape is None:
        # Not a tensor: a submodule that a higher-order operator runs (the autocast-disabled region of
        # timm's EfficientViT attention). It has no dims to label (nothing of it is sliced); the
        # operator that runs it has no rule and blocks the tensors it touches, by name. Before, this
        # ended in an internal error.
        return []
    labels = [ctx.space.fresh(s) for s in shape]
    for dim, dim_labels in enumerate(labels):
        ctx.space.members.append(Member(node.target, dim, dim_labels))
    return labels


def _components(size: int, ties: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    if ties:
        rows = np.concatenate([a for a, _ in ties])
        cols = np.concatenate([b for _, b in ties])
    else:
        rows = cols = np.zeros(0, dtype=np.int64)
    graph = coo_matrix((np.ones(rows.size, dtype=np.int8), (rows, cols)), shape=(size, size))
    _, classes = connected_components(graph, directed=False)
    return classes


def _grid_consistency_ties(space: LabelSpace, classes: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Ties that make grids over the same channels agree: two grids whose elements are the same
    classes must have the same factors (q, k and v views of one projection); if their factor
    shapes differ the factorisations conflict, and every factor is pinned. Grids with one free
    factor are left out: _single_factor_ties relates them exactly."""
    fixed = classes[FIXED]
    by_elements: dict[bytes, Grid] = {}
    ties = []
    for grid in space.grids:
        if len(free_axes(grid, classes)) < 2:
            continue
        key = np.sort(classes[grid.elements].ravel()).tobytes()
        first = by_elements.setdefault(key, grid)
        if first is grid:
            continue
        same_shape = first.elements.shape == grid.elements.shape and np.array_equal(
            classes[first.elements], classes[grid.elements])
        if same_shape:
            ties += [(a, b) for a, b in zip(first.factors, grid.factors)
                     if not np.array_equal(classes[a], classes[b])]
        else:
            ties += [(f, np.zeros_like(f)) for f in first.factors + grid.factors if (classes[f] != fixed).any()]
    return ties


def free_axes(grid: Grid, classes: np.ndarray) -> list[int]:
    """Axes of `grid` whose factor still has a removable index."""
    fixed = classes[FIXED]
    return [axis for axis, factor in enumerate(grid.factors) if (classes[factor] != fixed).any()]


def _fixed_grid_ties(space: LabelSpace, classes: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """A grid with a fixed element pins all its factors (the merged dim cannot shrink)."""
    fixed = classes[FIXED]
    return [(f, np.zeros_like(f)) for g in space.grids if (classes[g.elements] == fixed).any()
            for f in g.factors if (classes[f] != fixed).any()]


def _single_factor_ties(space: LabelSpace, classes: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """A grid with at most one free factor is a plain relabelling: slice i of its elements goes exactly
    when index i of that factor goes, so they are one class (and with no free factor, none can go).
    Tying them lets the elements be shared with other grids (a channel shuffle) without ever
    removing part of a slice."""
    ties = []
    for grid in space.grids:
        free = free_axes(grid, classes)
        if len(free) > 1:
            continue
        if not free:
            elements = grid.elements.ravel()
            targets = np.zeros_like(elements)
        else:
            factor = grid.factors[free[0]]
            rows = np.moveaxis(grid.elements, free[0], 0).reshape(factor.size, -1)
            elements, targets = rows.ravel(), np.repeat(factor, rows.shape[1])
        differ = classes[elements] != classes[targets]
        if differ.any():
            ties.append((elements[differ], targets[differ]))
    return ties


def _shared_element_pins(space: LabelSpace, classes: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Grids with several free factors whose elements are also elements of a different grid (a channel
    shuffle splits channels into groups and merges them back transposed) or repeat within the grid:
    removing such an element must take a whole slice of every grid holding it, and which factor's
    slice is ambiguous. Pin every free factor but the largest (the group counts, not the channels);
    the grid then has one free factor and _single_factor_ties relates it exactly."""
    multi = [g for g in space.grids if len(free_axes(g, classes)) > 1]
    element_sets: dict[bytes, np.ndarray] = {}  # each distinct set of element classes once
    conflicted = set()
    for index, grid in enumerate(multi):
        elements = distinct(classes[grid.elements])
        if elements.size < grid.elements.size:
            conflicted.add(index)  # an element repeats within the grid
        element_sets.setdefault(elements.tobytes(), elements)
    if len(element_sets) > 1:  # classes that are elements of grids over different element sets
        every = np.sort(np.concatenate(list(element_sets.values())))  # each set holds a class at most once
        shared = distinct(every[1:][every[1:] == every[:-1]])
        conflicted.update(i for i, g in enumerate(multi) if np.isin(classes[g.elements], shared).any())
    ties = []
    for index in sorted(conflicted):
        grid = multi[index]
        free = free_axes(grid, classes)
        keep = max(free, key=lambda axis: (grid.factors[axis].size, axis))
        ties += [(grid.factors[a], np.zeros_like(grid.factors[a])) for a in free if a != keep]
    return ties


def solve(space: LabelSpace, *, with_blockers: bool = True) -> np.ndarray:
    """Class of every label; grid rules may add ties, so iterate to a fixpoint."""
    ties = list(space.ties)
    if with_blockers:
        ties += [(b.labels, np.zeros_like(b.labels)) for b in space.blockers]
    while True:
        classes = _components(space.next_label, ties)
        extra = _fixed_grid_ties(space, classes) + _grid_consistency_ties(space, classes)
        extra = extra or _shared_element_pins(space, classes) or _single_factor_ties(space, classes)
        if not extra:
            return classes
        ties += extra


@dataclass
class ChannelAnalysis:
    space: LabelSpace
    classes: np.ndarray
    node_labels: dict
    unblocked_classes: np.ndarray = field(repr=False, default=None)

    @property
    def fixed_class(self) -> int:
        return int(self.classes[FIXED])

    @functools.cached_property
    def factor_slices(self) -> FactorSlices:
        """What goes with each grid factor class (graph/channels/factor_slices.py), found once per analysis."""
        return FactorSlices(self)


def analyse_channels(module: torch.fx.GraphModule, *, keep: set[str] | None = None,
                     free_batch: bool = False) -> ChannelAnalysis:
    """Label every tensor dim and solve for the classes. `free_batch` leaves the inputs' and outputs'
    dim 0 free, so that batch items become removable classes (graph/rebatch.py)."""
    ctx = _Context(module)
    _propagate(ctx, keep or set(), free_batch)
    classes = solve(ctx.space)
    unblocked = solve(ctx.space, with_blockers=False) if ctx.space.blockers else classes
    return ChannelAnalysis(ctx.space, classes, ctx.node_labels, unblocked)
