"""A captured module in the channels_last memory format, as the cuda backend times it.

`Module.to(memory_format=torch.channels_last)` changes the layout of the weights, and the convolutions then
hand channels_last activations on; an `aten.view` that merges channels with space (`x.view(n, -1)` before a
classifier, as in LeNet-style and many CIFAR networks) cannot be taken of such a tensor and raises. A reshape
is a view where one can be taken and a copy where not, the same values either way; so each view becomes a
reshape, unless an operator after it writes into its memory (graph/in_place_writes.py), where only a view keeps
the two aliased.
"""

from __future__ import annotations

import torch

from prunefx.graph.in_place_writes import overwritten_later

_VIEW, _RESHAPE = torch.ops.aten.view.default, torch.ops.aten.reshape.default


def channels_last(module: torch.nn.Module) -> torch.nn.Module:
    """`module` (in place, returned) with its 4-D tensors channels_last and its graphs' views as reshapes."""
    for graph_module in module.modules():
        if isinstance(graph_module, torch.fx.GraphModule) and views_as_reshapes(graph_module.graph):
            graph_module.recompile()
    return module.to(memory_format=torch.channels_last)


def views_as_reshapes(graph: torch.fx.Graph) -> int:
    """Every `aten.view` of `graph` whose memory nothing writes into later made an `aten.reshape`; how many."""
    overwritten = overwritten_later(graph)
    changed = 0
    for node in graph.nodes:
        if node.op == "call_function" and node.target is _VIEW and node not in overwritten:
            node.target = _RESHAPE
            changed += 1
    return changed
