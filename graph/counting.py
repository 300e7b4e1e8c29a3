"""The one MACs and parameter counter used everywhere (inspect, pass statistics, reports).

MACs are multiply-accumulates of convolutions, linear layers, matrix products and attention,
read from the shape metadata of the graph (node.meta['val']) of the nodes whose results are used;
element-wise work is not counted, as in every published MACs table.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import torch

from prunefx.graph.operators import CONVOLUTIONS, MATRIX_PRODUCTS, TRANSPOSED_CONVOLUTIONS
from prunefx.graph.program import require_program

aten = torch.ops.aten



@dataclass(frozen=True)
class Cost:
    macs: int
    params: int


def _shape(value) -> tuple[int, ...] | None:
    meta = getattr(value, "meta", {}).get("val") if isinstance(value, torch.fx.Node) else value
    return tuple(int(s) for s in meta.shape) if isinstance(meta, torch.Tensor) else None


ShapeOf = Callable[[object], "tuple[int, ...] | None"]


def _numel(shape: tuple[int, ...] | None) -> int:
    return math.prod(shape) if shape is not None else 0


def _convolution_macs(node: torch.fx.Node, shape: ShapeOf) -> int:
    weight = shape(node.args[1])
    if weight is None:
        return 0
    transposed = node.target is aten.convolution.default and len(node.args) > 6 and node.args[6]
    if transposed:  # weight is [C_in, C_out / groups, k...]: every input element feeds C_out/groups * k taps
        return _numel(shape(node.args[0])) * math.prod(weight[1:])
    return _numel(shape(node)) * math.prod(weight[1:])


def _matrix_product_macs(node: torch.fx.Node, shape: ShapeOf) -> int:
    # addmm(bias, a, b) and baddbmm(bias, a, b) carry the left operand second.
    left = node.args[1] if node.target in (aten.addmm.default, aten.baddbmm.default, aten.addbmm.default) else node.args[0]
    left_shape = shape(left)
    if left_shape is None:
        return 0
    return _numel(shape(node)) * left_shape[-1]


def _attention_macs(node: torch.fx.Node, shape: ShapeOf) -> int:
    query, key, value = (shape(a) for a in node.args[:3])
    if query is None or key is None or value is None:
        return 0
    batch_heads = math.prod(query[:-2])
    length, depth, source = query[-2], query[-1], key[-2]
    return batch_heads * length * source * (depth + value[-1])  # QK^T then (softmax) V


def _einsum_macs(node: torch.fx.Node, shape: ShapeOf) -> int:
    equation, operands = node.args[0], node.args[1]
    inputs = re.sub(r"\s", "", equation).split("->")[0].split(",")
    sizes: dict[str, int] = {}
    for letters, operand in zip(inputs, operands):
        operand_shape = shape(operand)
        if operand_shape is None or "." in letters:
            return 0
        sizes.update(zip(letters, operand_shape))
    return math.prod(sizes.values())


def node_macs(node: torch.fx.Node, shape: ShapeOf = _shape) -> int:
    """Multiply-accumulates of one graph node (0 for operators that are not counted).

    `shape` gives the shape of a node; the default reads its metadata. Channel selection passes
    the shapes a node would have after a removal, to predict MACs without rewriting the graph.
    """
    if node.op != "call_function":
        return 0
    target = node.target
    if target in CONVOLUTIONS:
        return _convolution_macs(node, shape)
    if target in TRANSPOSED_CONVOLUTIONS:
        weight = shape(node.args[1])
        return _numel(shape(node.args[0])) * math.prod(weight[1:]) if weight else 0
    if target is aten.linear.default:
        weight = shape(node.args[1])
        return _numel(shape(node)) * weight[1] if weight else 0
    if target in MATRIX_PRODUCTS:
        return _matrix_product_macs(node, shape)
    if target is aten.scaled_dot_product_attention.default:
        return _attention_macs(node, shape)
    if target is aten.einsum.default:
        return _einsum_macs(node, shape)
    return 0


def count_macs(module: torch.fx.GraphModule) -> int:
    """MACs of the nodes whose results are used: a branch nothing reads (the other head of an end-to-end YOLO
    in export mode) is not in the ONNX file nor in the graph a pass rewrites, so it is not in a fraction either."""
    return sum(node_macs(node) for node in live_nodes(module.graph))


def live_nodes(graph: torch.fx.Graph) -> list[torch.fx.Node]:
    """The nodes the outputs or a side effect (an in-place update, an assertion) depend on, in graph order."""
    live: set[torch.fx.Node] = set()
    pending = [node for node in graph.nodes if node.op == "output" or node.is_impure()]
    while pending:
        node = pending.pop()
        if node not in live:
            live.add(node)
            pending.extend(node.all_input_nodes)
    return [node for node in graph.nodes if node in live]


def count_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def count(program) -> Cost:
    """MACs and parameters of a Program (its shape metadata must be current: see Program.refresh_meta)."""
    require_program(program, "count")
    return Cost(macs=count_macs(program.module), params=count_params(program.module))


def operator_histogram(module: torch.fx.GraphModule) -> Counter:
    """How many times each operator appears, e.g. {'aten.conv2d.default': 52, ...}."""
    return Counter(str(node.target) for node in module.graph.nodes if node.op == "call_function")
