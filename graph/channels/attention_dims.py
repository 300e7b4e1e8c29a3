"""Which channel groups are attention head dims, the widths that fused attention kernels are built for.

A head dim is the last dim of scaled_dot_product_attention's q, k or v, or, where attention is spelled out
as matrix products, an inner dim of a product of two activations (q kᵀ: q's last dim and kᵀ's rows;
attention · v: v's last dim); in an einsum of two activations, every dim whose letter is not in both
operands and the output (those are batch and head dims). Token dims are fixed anyway and drop out. Removing whole heads keeps these widths as they are (a 64-wide head stays
64 wide, the size flash-attention kernels are tuned for, and the softmax scale stays the one the model was
trained with); removing head dims narrows every head alike. passes/remove_channels.py pins the groups
found here unless its caller asks for head-dim pruning.

Not recognised: einsum equations with an ellipsis (their dims stay prunable like any width).
"""

from __future__ import annotations

import numpy as np
import torch

from prunefx.graph.channels.groups import Combing, _parameter_sources
from prunefx.graph.channels.labels import distinct

aten = torch.ops.aten
SDPA = aten.scaled_dot_product_attention.default
PRODUCTS = {aten.matmul.default, aten.bmm.default}  # attention spelled out: two activations multiplied


def _head_dim_labels(module: torch.fx.GraphModule, node_labels: dict) -> list[np.ndarray]:
    """Labels of every head dim in the graph (module docstring)."""
    weights = _parameter_sources(module)  # nodes computed from parameters alone: a weight, not an activation
    found: list[np.ndarray] = []
    for node in module.graph.nodes:
        if node.op != "call_function":
            continue
        if node.target is SDPA:
            operands = [_dims(node_labels, arg) for arg in node.args[:3]]
            found += [labels[-1] for labels in operands if labels]
        elif node.target in PRODUCTS and len(node.args) >= 2:
            a, b = node.args[:2]
            if not all(isinstance(x, torch.fx.Node) and x not in weights for x in (a, b)):
                continue  # a layer's weight times activations: a linear layer, not attention
            left, right = _dims(node_labels, a), _dims(node_labels, b)
            if left and right and len(left) >= 2 and len(right) >= 2:
                found += [left[-1], right[-2], right[-1]]
        elif node.target is aten.einsum.default:
            found += _einsum_inner_dims(node, node_labels, weights)
    return found


def _einsum_inner_dims(node: torch.fx.Node, node_labels: dict, weights: dict) -> list[np.ndarray]:
    equation, operands = str(node.args[0]), node.args[1]
    if not isinstance(operands, (list, tuple)) or "..." in equation or "->" not in equation or len(operands) != 2 \
            or not all(isinstance(x, torch.fx.Node) and x not in weights for x in operands):
        return []
    inputs, output = equation.replace(" ", "").split("->")
    letters = inputs.split(",")
    labels = [lab for lab in (_dims(node_labels, x) for x in operands) if lab is not None]
    if len(labels) != 2 or any(len(lab) != len(spec) for lab, spec in zip(labels, letters)):
        return []
    shared = set(letters[0]) & set(letters[1]) & set(output)
    return [dims[i] for dims, spec in zip(labels, letters) for i, letter in enumerate(spec) if letter not in shared]


def _dims(node_labels: dict, arg) -> list | None:
    """The per-dim labels of a tensor argument (None for anything else)."""
    labels = node_labels.get(arg) if isinstance(arg, torch.fx.Node) else None
    return list(labels) if isinstance(labels, (list, tuple)) and labels and all(isinstance(d, np.ndarray) for d in labels) else None


def head_dim_groups(module: torch.fx.GraphModule, combing: Combing) -> list[int]:
    """Indices into `combing.groups` of the groups that hold an attention head dim."""
    analysis = combing.analysis
    classes: set[int] = set()
    for labels in _head_dim_labels(module, analysis.node_labels):
        classes.update(int(c) for c in distinct(analysis.classes[labels]))
    classes.discard(analysis.fixed_class)
    return [index for index, group in enumerate(combing.groups) if classes & set(group.classes.tolist())]


def floor_names(module: torch.fx.GraphModule, combing: Combing,
                head_dims: list[int] | None = None) -> list[list[str]]:
    """Each group's names in remove_channels' `min_widths`: 'tensor:dim' for a plain width. The two factors
    of a head grid (heads and head dims) slice the same tensor dims, so each is named apart:
    'tensor:dim:heads' and 'tensor:dim:head_dim'. `head_dims`: head_dim_groups' answer, where the caller has it."""
    head_dims = set(head_dim_groups(module, combing) if head_dims is None else head_dims)
    names = []
    for index, group in enumerate(combing.groups):
        suffix = ("head_dim" if index in head_dims else "heads") if group.factor else None
        names.append([f"{tensor}:{dim}" + (f":{suffix}" if suffix else "") for tensor, dim in group.members])
    return names
