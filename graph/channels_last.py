"""A captured module in the channels_last memory format, as the cuda backend times it.

The 4-D weights are made channels_last (a Conv3d's keep their layout), and the convolutions then hand
channels_last activations on; an `aten.view` that merges channels with space (`x.view(n, -1)` before a
classifier, as in LeNet-style and many CIFAR networks) cannot be taken of such a tensor and raises. A reshape
is a view where one can be taken and a copy where not, the same values either way; so each view becomes a
reshape, unless an operator after it writes into its memory (graph/in_place_writes.py), where only a view keeps
the two aliased: a module with such a view of a 4-D tensor stays in the contiguous layout.
"""

from __future__ import annotations

import torch

from prunefx.graph.in_place_writes import overwritten_later

_VIEW, _RESHAPE = torch.ops.aten.view.default, torch.ops.aten.reshape.default


def channels_last(module: torch.nn.Module) -> bool:
    """`module` (in place) with its 4-D tensors channels_last and its graphs' views as reshapes; False, the module
    left as it was, where a view written through later reads a 4-D tensor (the module docstring)."""
    graphs = [(graph_module, overwritten_later(graph_module.graph)) for graph_module in module.modules()
              if isinstance(graph_module, torch.fx.GraphModule)]
    if any(_written_view_of_4d(graph_module.graph, overwritten) for graph_module, overwritten in graphs):
        return False
    for graph_module, overwritten in graphs:
        if views_as_reshapes(graph_module.graph, overwritten):
            graph_module.recompile()
    _four_d_channels_last(module)
    return True


def _four_d_channels_last(module: torch.nn.Module) -> None:
    """The 4-D parameters and buffers made channels_last. `Module.to(memory_format=...)` converts 5-D ones too,
    which channels_last (a layout of four dimensions) refuses: a Conv3d's weight, a video model's."""
    for parameter in module.parameters():
        if parameter.dim() == 4:
            parameter.data = parameter.data.contiguous(memory_format=torch.channels_last)
    for owner in module.modules():
        for name, buffer in owner.named_buffers(recurse=False):
            if buffer.dim() == 4:
                setattr(owner, name, buffer.contiguous(memory_format=torch.channels_last))


def _written_view_of_4d(graph: torch.fx.Graph, overwritten: set[torch.fx.Node]) -> bool:
    for node in graph.nodes:
        if node.op == "call_function" and node.target is _VIEW and node in overwritten:
            value = node.args[0].meta.get("val") if isinstance(node.args[0], torch.fx.Node) else None
            if not isinstance(value, torch.Tensor) or value.dim() == 4:  # unknown: as unsafe as 4-D
                return True
    return False


def views_as_reshapes(graph: torch.fx.Graph, overwritten: set[torch.fx.Node] | None = None) -> int:
    """Every `aten.view` of `graph` whose memory nothing writes into later (`overwritten`, found here when not
    given) made an `aten.reshape`; how many."""
    overwritten = overwritten_later(graph) if overwritten is None else overwritten
    changed = 0
    for node in graph.nodes:
        if node.op == "call_function" and node.target is _VIEW and node not in overwritten:
            node.target = _RESHAPE
            changed += 1
    return changed
