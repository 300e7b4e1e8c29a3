"""Operator node names kept across a save.

torch.export names a graph's nodes afresh from its operators, so a node a pass made (`conv2d_default_3`) or one
after a removed node comes back from a saved file under another name (`conv2d_5`), and a name kept across the
save (a distillation's feature loss, a layer left in float) finds nothing. A file records its operator nodes'
names in graph order, with their operators; a load gives them back where the graph read back computes the same
operators in the same order (else torch's names stay).
"""

from __future__ import annotations

import copy

import torch


def operator_nodes(graph: torch.fx.Graph) -> list[torch.fx.Node]:
    return [node for node in graph.nodes if node.op == "call_function"]


def node_names(module: torch.fx.GraphModule) -> list[list[str]]:
    """[name, operator] of every operator node, in graph order: what prunefx.json records."""
    return [[node.name, str(node.target)] for node in operator_nodes(module.graph)]


def restore_node_names(module: torch.fx.GraphModule, recorded: list[list[str]]) -> None:
    """Name `module`'s operator nodes as `recorded` says, when its operators are the recorded ones in order."""
    nodes = operator_nodes(module.graph)
    if [str(node.target) for node in nodes] != [target for _, target in recorded]:
        return
    for node, (name, _) in zip(nodes, recorded):
        node.name = name  # the graph's namespace still holds torch's names: a copy of the graph takes these anew
    module.graph = copy.deepcopy(module.graph)  # recompiles
