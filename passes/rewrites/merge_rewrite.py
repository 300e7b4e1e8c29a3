"""Writing a merge_blocks candidate (passes/rewrites/merge_candidates.py) into the graph: the elements it replaces
become one conv2d or linear node (plus a bias-map add where a constant varies near padded borders), or
nothing for a dropped identity; and the record of the merge that the pass's statistics list.
"""

from __future__ import annotations

import torch

from prunefx.graph.attributes import free_name, get_tensor, set_tensor, users_of_tensor
from prunefx.graph.depth.affine_maps import Conv, Linear
from prunefx.passes.rewrites.merge_candidates import MergeCandidate

aten = torch.ops.aten


def apply_merge(module: torch.fx.GraphModule, candidate: MergeCandidate) -> None:
    graph = module.graph
    elements = candidate.elements
    anchor = elements[-1].output
    if candidate.kind == "identity":
        replacement = elements[0].data
    else:
        with graph.inserting_before(anchor):
            replacement = _layer_nodes(module, candidate, anchor)
    anchor.replace_all_uses_with(replacement)
    for node in reversed([node for element in elements for node in element.nodes]):
        graph.erase_node(node)  # intermediates have no other user; constants left behind die at recompile


def _layer_nodes(module: torch.fx.GraphModule, candidate: MergeCandidate, anchor: torch.fx.Node) -> torch.fx.Node:
    op, graph = candidate.op, module.graph
    if op is None:
        raise TypeError(f"merge candidate {candidate.key} has no merged layer")
    template = next(element for element in candidate.elements if element.kind == "layer").nodes[0]
    weight_target = template.args[1].target
    like = get_tensor(module, weight_target)  # the algebra ran in float64 on the CPU: back to the model's kind
    stem = weight_target[: -len("weight")] if weight_target.endswith("weight") else weight_target + "_"
    mine = {node for element in candidate.elements for node in element.nodes}
    tensor = lambda name, value: _tensor_node(module, stem + name, value.to(like), mine)  # noqa: E731
    weight = tensor("weight", op.weight)
    bias = tensor("bias", op.bias) if op.bias is not None else None
    data = candidate.elements[0].data
    if isinstance(op, Conv):
        out = graph.call_function(aten.conv2d.default, (data, weight, bias, list(op.stride), list(op.padding),
                                                        list(op.dilation), op.groups))
    else:
        out = graph.call_function(aten.linear.default, (data, weight, bias))
    out.meta["val"] = anchor.meta["val"]  # same shape; the counter reads it until the final recompile
    if "nn_module_stack" in template.meta:  # the module it came from: blocks and the ONNX scopes name it by that
        out.meta["nn_module_stack"] = template.meta["nn_module_stack"]
    if isinstance(op, Conv) and op.bias_map is not None:
        out = graph.call_function(aten.add.Tensor, (out, tensor("bias_map", op.bias_map)))
        out.meta["val"] = anchor.meta["val"]
    return out


def _tensor_node(module: torch.fx.GraphModule, wanted: str, value: torch.Tensor, mine: set) -> torch.fx.Node:
    """A get_attr node for `value`, stored under `wanted` when that name is free or used only by the
    nodes being replaced (so a folded conv keeps its weight's name), else under a fresh name."""
    try:
        get_tensor(module, wanted)
        reusable = all(user in mine for user in users_of_tensor(module, wanted))
    except AttributeError:
        reusable = True
    target = wanted if reusable else free_name(module, wanted)
    set_tensor(module, target, value)
    node = module.graph.get_attr(target)
    node.meta["val"] = get_tensor(module, target)
    return node


def describe_merge(candidate: MergeCandidate) -> dict:
    record = {"kind": candidate.kind, "nodes": [element.name for element in candidate.elements]}
    op = candidate.op
    if isinstance(op, Conv):
        out_channels, per_group, height, width = op.weight.shape
        record["result"] = (f"conv {height}x{width} {per_group * op.groups}->{out_channels} stride {op.stride} "
                            f"padding {op.padding} groups {op.groups}" + (" + bias map" if op.bias_map is not None
                                                                          else ""))
    elif isinstance(op, Linear):
        record["result"] = f"linear {op.weight.shape[1]}->{op.weight.shape[0]}"
    if candidate.macs is not None:
        record["macs"] = list(candidate.macs)
    return record
