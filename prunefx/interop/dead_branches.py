"""The branches of the user's model that its pruned Program does not hold: modules its forward calls and whose
result it ignores, such as an auxiliary head in eval mode or a backbone's last layer that a task head skips.
Pruning drops them as dead code, so their tensors keep the dense widths of the live channels they read, and the
written-back forward, which still calls them, would fail.

Each such tensor is cut as the live tensors that share its channels were. The dense capture, dead code and all,
ties every channel of a dead tensor to channels of live ones (one class of the channel analysis), and the
Program's record of the channels each live tensor kept (graph/channels/kept_channels.py) says which classes
went. Where the dead code ties a removed channel to a kept one, or reads removed channels through an operator
the analysis cannot follow, no cut is consistent: WriteBackError, never a guess. The dead code's weights are
cut, not compensated: the proof cannot check them, since nothing the model returns depends on them.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import fx

from prunefx.graph import Program
from prunefx.graph.attributes import get_tensor
from prunefx.graph.channels.analysis import ChannelAnalysis, analyse_channels
from prunefx.graph.channels.kept_channels import kept_masks
from prunefx.graph.channels.removal import sliced_by_classes
from prunefx.interop.write_back_proof import WriteBackError, program_tensors


def eliminate_dead_code(dense: fx.GraphModule, state: set[str]) -> tuple[fx.GraphModule | None, set[str]]:
    """Drop the dense capture's dead code, as the pruned Program did; what it dropped, for
    `dead_branch_tensors`: a module of the graph before (sharing the capture's tensors, made before the caller
    deletes those the graph no longer reads; None without dead tensors) and the tensors of the model's state
    (`state`) that only the dead code read."""
    full = fx.Graph()  # a copy: its nodes keep their metadata
    full.output(full.graph_copy(dense.graph, {}))
    dense.graph.eliminate_dead_code()
    read = {str(node.target) for node in full.nodes if node.op == "get_attr"}
    read_live = {str(node.target) for node in dense.graph.nodes if node.op == "get_attr"}
    dead = (read - read_live) & state
    return (fx.GraphModule(dense, full) if dead else None), dead


def dead_branch_tensors(program: Program, full: fx.GraphModule, dead: set[str], name: str
                        ) -> dict[str, torch.Tensor]:
    """Each tensor of `dead` (read by `full`, the dense capture with its dead code) cut along every dim whose
    channels the live tensors lost, by name; those it left whole are not returned."""
    if program.analysis.kept_channels is None:  # nothing recorded as cut: the dead code keeps its widths
        return {}
    analysis = analyse_channels(full)
    nodes = {str(node.target): node for node in full.graph.nodes if node.op == "get_attr"}
    removed, kept = _classes_cut(program, full, analysis, nodes)
    mixed = list(removed & kept)
    if mixed:  # one class of the dense analysis, cut in part: only the dead code can have tied them
        tied = [target for target in sorted(dead) if any(np.isin(analysis.classes[labels], mixed).any()
                                                         for labels in analysis.node_labels.get(nodes[target], ()))]
        raise WriteBackError(
            f"cannot write {name} back: '{(tied or sorted(dead))[0]}' is read only by code whose result the model does not "
            "use (pruning drops it, as an auxiliary head's in eval mode), and that code ties channels pruning "
            "removed to ones it kept, or reads them through an operator prunefx cannot cut: it cannot be cut as "
            "the rest was")
    cut = {}
    for target in sorted(dead):
        if nodes[target] in analysis.node_labels:
            tensor, masks = sliced_by_classes(get_tensor(full, target), analysis, nodes[target],
                                              np.array(sorted(removed), dtype=np.int64))
            if masks:
                cut[target] = tensor
    return cut


def _classes_cut(program: Program, full: fx.GraphModule, analysis: ChannelAnalysis, nodes: dict[str, fx.Node]
                 ) -> tuple[set[int], set[int]]:
    """The classes (of `full`'s analysis) whose channels the live tensors lost, and those they kept: from each
    recorded tensor dim that still has the widths its mask says (dense before, kept after), and every dim of a
    live tensor that kept its dense width (kept whole)."""
    live = program_tensors(program)
    removed: set[int] = set()
    kept: set[int] = set()
    masks = kept_masks(program.analysis.kept_channels)
    for target in live.keys() & nodes.keys():
        node = nodes[target]
        if node not in analysis.node_labels:
            continue
        dense_shape, pruned_shape = get_tensor(full, target).shape, live[target].shape
        if len(dense_shape) != len(pruned_shape):
            continue
        for dim, labels in enumerate(analysis.node_labels[node]):
            classes = analysis.classes[labels]
            mask = masks.get(target, {}).get(dim)
            if mask is None and dense_shape[dim] == pruned_shape[dim]:
                kept.update(classes.tolist())
            elif mask is not None and mask.size == dense_shape[dim] and int(mask.sum()) == pruned_shape[dim]:
                removed.update(classes[~mask].tolist())
                kept.update(classes[mask].tolist())  # else not this model's widths, or resized since: says nothing
    return removed, kept
