"""Channel groups: the removable units that dependency analysis finds, and the blocked ones.

A group is a list of classes (removable channels) that touch the same tensor dims, in index order:
the output channels of a conv together with its BN and the next conv's input channels, a residual
stream, the heads of an attention block (a grid factor), ... Groups that touch no convolution or
linear weight (class tokens, position indices) carry no compute and are left out.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import torch

from prunefx.graph.channels.analysis import ChannelAnalysis, analyse_channels, free_axes
from prunefx.graph.channels.labels import distinct
from prunefx.graph.operators import CONVOLUTIONS, LINEARS, TRANSPOSED_CONVOLUTIONS

aten = torch.ops.aten
_WEIGHT_OPERATORS = (CONVOLUTIONS | TRANSPOSED_CONVOLUTIONS | LINEARS
                     | {aten.mm.default, aten.matmul.default, aten.bmm.default, aten.addmm.default})
_INPUT_FIRST = _WEIGHT_OPERATORS - {aten.mm.default, aten.matmul.default, aten.bmm.default, aten.addmm.default}


@dataclass
class ChannelGroup:
    id: int
    classes: np.ndarray                 # class of each channel, in index order
    members: list[tuple[str, int]]      # (tensor, dim) pairs sliced when a channel goes
    exact: bool                         # zero-weight channels can be removed without changing outputs
    # a factor of a grid with another prunable factor (heads, or the head dims shared by all heads),
    # not a plain width (a flatten into a linear, the channels of a shuffle)
    factor: bool

    @property
    def size(self) -> int:
        return int(self.classes.size)

    def to_dict(self) -> dict:
        return {"id": self.id, "size": self.size, "members": [f"{t}:{d}" for t, d in self.members],
                "exact": self.exact, "factor": self.factor}


@dataclass
class BlockedGroup:
    members: list[tuple[str, int]]
    size: int
    operators: list[str]
    reasons: list[str]

    def to_dict(self) -> dict:
        return {"members": [f"{t}:{d}" for t, d in self.members], "size": self.size,
                "operators": self.operators, "reasons": self.reasons}


@dataclass
class Combing:
    groups: list[ChannelGroup]
    blocked: list[BlockedGroup]
    analysis: ChannelAnalysis


def _weight_targets(module: torch.fx.GraphModule) -> set[str]:
    """Parameters and buffers that a conv, linear or matrix product multiplies. The input of a linear
    or conv is no weight even when it is a buffer (the relative coordinates that the position MLP of a
    CoAtNet/MaxViT `rmlp` block reads): its dims are positions, and counting them made pseudo-groups
    of coordinates that the reports listed as blocked. A weight computed from parameters alone on every
    call (BiT's and NFNet's standardised convs: reshape, batch_norm, reshape_as of the parameter) counts
    as the parameters it is computed from; before, those convs' groups were dropped as carrying no
    compute, and BiT had one prunable group."""
    sources = _parameter_sources(module)
    targets = set()
    for node in module.graph.nodes:
        if node.op == "call_function" and node.target in _WEIGHT_OPERATORS:
            first = 1 if node.target in _INPUT_FIRST else 0
            for arg in node.args[first:3]:
                targets |= sources.get(arg, set())
    return targets


def _parameter_sources(module: torch.fx.GraphModule) -> dict[torch.fx.Node, set[str]]:
    """For every node computed from parameters and buffers alone (no graph input behind it), the
    get_attr targets it is computed from."""
    sources: dict[torch.fx.Node, set[str]] = {}
    for node in module.graph.nodes:
        if node.op == "get_attr":
            sources[node] = {node.target}
        elif node.op == "call_function" and node.all_input_nodes \
                and all(parent in sources for parent in node.all_input_nodes):
            sources[node] = set().union(*(sources[parent] for parent in node.all_input_nodes))
    return sources


def _signatures(analysis: ChannelAnalysis, classes: np.ndarray) -> tuple[dict, dict, set, dict]:
    """Direct members of each class, the derived classes each factor class controls, the derived
    set, and for factor classes the grid axes they index (heads and head-dims of one attention
    block control the same tensors, but are different factors and so different groups)."""
    direct = _direct_members(analysis.space.members, classes)
    controls: dict[int, set] = defaultdict(set)
    axes: dict[int, set] = defaultdict(set)
    derived = set()
    for grid_index, grid in enumerate(analysis.space.grids):
        if len(free_axes(grid, classes)) < 2:
            continue  # a plain relabelling (a flatten into a linear): its factor is tied to its elements
        derived.update(int(c) for c in distinct(classes[grid.elements]))
        for axis, factor in enumerate(grid.factors):
            rows = np.sort(classes[np.moveaxis(grid.elements, axis, 0).reshape(factor.size, -1)], axis=1)
            first_seen = np.ones(rows.shape, dtype=bool)
            first_seen[:, 1:] = rows[:, 1:] != rows[:, :-1]
            for label, row, keep in zip(classes[factor].tolist(), rows, first_seen):
                controls[label].update(row[keep].tolist())
                axes[label].add((grid_index, axis))
    return direct, controls, derived, axes


def _direct_members(members: list, classes: np.ndarray) -> dict[int, frozenset]:
    """class -> the (tensor, dim) pairs it indexes. A ViT-L has 700k (class, member) pairs but a few hundred
    distinct sets of members: classes are grouped by their sorted member list (a hash of it, every group then
    compared element by element with its first class) and each distinct set is built once and shared."""
    if not members:
        return {}
    per_member = [distinct(classes[member.labels]) for member in members]
    owner = np.repeat(np.arange(len(members)), [found.size for found in per_member])
    cls = np.concatenate(per_member)
    order = np.lexsort((owner, cls))  # by class, then member
    cls, owner = cls[order], owner[order]
    starts = np.flatnonzero(np.r_[True, cls[1:] != cls[:-1]])
    counts = np.diff(np.r_[starts, cls.size])
    keys = np.random.default_rng(0).integers(1, 2**63, size=len(members), dtype=np.int64)
    hashes = np.bitwise_xor.reduceat(keys[owner], starts)
    _, first, kind = np.unique(hashes, return_index=True, return_inverse=True)
    kind = kind.reshape(-1)
    # exact, not probable: every class's list is as long as its kind's first list and equal to it element by
    # element, or the kinds are rebuilt by value
    same = counts == counts[first[kind]]
    if same.all() and cls.size:
        segment = np.repeat(np.arange(starts.size), counts)
        offset = np.arange(cls.size) - starts[segment]
        same = owner == owner[starts[first[kind]][segment] + offset]
    if not same.all():
        lists = [tuple(owner[a:a + n].tolist()) for a, n in zip(starts, counts)]
        index = {found: number for number, found in enumerate(dict.fromkeys(lists))}
        kind = np.array([index[found] for found in lists])
        first = np.array([lists.index(found) for found in index])
    sets = [frozenset((members[m].target, members[m].dim) for m in owner[starts[f]:starts[f] + counts[f]].tolist())
            for f in first.tolist()]
    return dict(zip(cls[starts].tolist(), [sets[k] for k in kind.tolist()]))


_NOTHING: frozenset = frozenset()


def _closure(cls: int, direct, controls, memo, depth=0) -> frozenset:
    if cls not in memo:
        own = direct.get(cls, _NOTHING)
        children = [child for child in controls.get(cls, ()) if child != cls] if depth < 8 else []
        if children:
            touched = set(own)
            for child in children:
                found = memo.get(child)  # most children are shared and already known: no call for those
                touched |= found if found is not None else _closure(child, direct, controls, memo, depth + 1)
            own = frozenset(touched)
        memo[cls] = own
    return memo[cls]


def _group_classes(analysis: ChannelAnalysis, classes: np.ndarray, weights: set[str]):
    fixed = int(classes[0])
    direct, controls, derived, axes = _signatures(analysis, classes)
    factor_classes = {c for c in controls if c not in derived}
    unique_classes, first_labels = np.unique(classes, return_index=True)
    first_label = np.zeros(int(unique_classes[-1]) + 1, dtype=np.int64)
    first_label[unique_classes] = first_labels
    candidates = np.fromiter(set(direct) | factor_classes, dtype=np.int64)
    candidates = candidates[np.argsort(first_label[candidates], kind="stable")]
    memo: dict[int, frozenset] = {}
    by_signature: dict[frozenset, list[int]] = defaultdict(list)
    for cls in candidates.tolist():
        if cls == fixed or cls in derived:
            continue
        factor_key = frozenset(axes[cls]) if cls in factor_classes else None
        by_signature[(_closure(cls, direct, controls, memo), factor_key)].append(cls)
    useful = {key: classes for key, classes in by_signature.items() if any(t in weights for t, _ in key[0])}
    return useful, factor_classes


def _inexact_classes(analysis: ChannelAnalysis) -> set[int]:
    """Classes normalised or reduced together with kept channels, and the grid factors whose slice
    holds one (a head, when a layer norm runs over the merged heads): removing them is inexact."""
    classes = analysis.classes
    inexact = np.zeros(int(classes.max()) + 1, dtype=bool)
    for labels in analysis.space.inexact:
        inexact[classes[labels]] = True
    changed = True
    while changed:  # nested grids: a factor can be an element of another grid
        changed = False
        for grid in analysis.space.grids:
            for axis, factor in enumerate(grid.factors):
                rows = classes[np.moveaxis(grid.elements, axis, 0).reshape(factor.size, -1)]
                grown = inexact[rows].any(axis=1) & ~inexact[classes[factor]]
                if grown.any():
                    inexact[classes[factor][grown]] = True
                    changed = True
    return set(np.flatnonzero(inexact).tolist())


def find_channel_groups(module: torch.fx.GraphModule, *, keep: set[str] | None = None) -> Combing:
    analysis = analyse_channels(module, keep=keep)
    weights = _weight_targets(module)
    by_signature, factor_classes = _group_classes(analysis, analysis.classes, weights)
    inexact = _inexact_classes(analysis)
    # a group of one channel cannot narrow (its last channel stays): most are a parameter's size-1 dims (a gain of
    # shape [C, 1, 1, 1]), not channels, and counted as removable they would inflate every channel count
    widths = [(signature, classes) for (signature, _), classes in by_signature.items() if len(classes) > 1]
    groups = [ChannelGroup(index, np.array(classes), sorted(signature),
                           exact=not (set(classes) & inexact), factor=classes[0] in factor_classes)
              for index, (signature, classes) in enumerate(widths)]
    return Combing(groups, _blocked_groups(analysis, weights), analysis)


_INDEXING = {"aten.unbind.int", "aten.select.int"}


def _blocked_groups(analysis: ChannelAnalysis, weights: set[str]) -> list[BlockedGroup]:
    """Groups that would exist without the blocking operators, and which operators blocked them."""
    unblocked = analysis.unblocked_classes
    blocker_classes = [set(distinct(unblocked[b.labels]).tolist()) - {int(unblocked[0])}
                       for b in analysis.space.blockers]
    if not any(blocker_classes):  # every blocker only touched dims that were fixed anyway
        return []
    fixed_now = int(analysis.classes[0])
    unique_classes, first_labels = np.unique(unblocked, return_index=True)
    first_label = dict(zip(unique_classes.tolist(), first_labels.tolist()))
    by_signature, _ = _group_classes(analysis, unblocked, weights)
    blocked = []
    for (signature, _), classes in by_signature.items():
        if len(classes) < 2 or not all(analysis.classes[first_label[c]] == fixed_now for c in classes):
            continue  # (one channel would not narrow blocked or not: see find_channel_groups)
        class_set = set(classes)
        culprits = [b for b, touched in zip(analysis.space.blockers, blocker_classes) if class_set & touched]
        if culprits and all(b.operator in _INDEXING for b in culprits):
            continue  # a dim that is taken apart by index (attention's q, k, v): never a width
        blocked.append(BlockedGroup(sorted(signature), len(classes),
                                    sorted({b.operator for b in culprits}) or ["(propagated)"],
                                    sorted({b.reason for b in culprits})))
    return blocked
