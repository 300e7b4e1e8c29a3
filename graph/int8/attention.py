"""Spell scaled_dot_product_attention out as the operators it computes, so each can be quantized.

`aten.scaled_dot_product_attention(q, k, v)` is one node in the captured graph: nothing can sit between its
matmuls, so INT8 quantization (graph/int8/quantization.py) left attention in float and TensorRT could not run it in
INT8. `decompose_attention` rewrites each such node into

    scores = matmul(q, transpose(k, -2, -1)) * scale      # scale = 1/sqrt(head_dim) unless given
    out    = matmul(softmax(scores, -1), v)

(with `+ attn_mask` before the softmax for a float mask), the form TensorRT's attention fusion reads from an
ONNX file with Q/DQ on Q, Kᵀ, V and the softmax output. The rewrite is exact up to float rounding.
Left alone, with the reason: causal attention, dropout, boolean masks and grouped-query attention (`enable_gqa`):
they need more operators than this spelling, and none of the models measured here uses them.
"""

from __future__ import annotations

import math

import torch

from prunefx.graph.program import Program

aten = torch.ops.aten
SDPA = aten.scaled_dot_product_attention.default
_DEFAULTS = {"attn_mask": None, "dropout_p": 0.0, "is_causal": False, "scale": None, "enable_gqa": False}
_POSITIONS = ("attn_mask", "dropout_p", "is_causal")  # args[3:6]


def _options(node: torch.fx.Node) -> dict:
    options = dict(_DEFAULTS)
    options.update(dict(zip(_POSITIONS, node.args[3:])))
    options.update(node.kwargs)
    return options


def why_kept(node: torch.fx.Node) -> str | None:
    """Why this attention node is not decomposed, or None when it is."""
    options = _options(node)
    mask = options["attn_mask"]
    if options["is_causal"]:
        return "causal attention"
    if options["dropout_p"]:
        return "attention dropout"
    if options["enable_gqa"]:
        return "grouped-query attention"
    if isinstance(mask, torch.fx.Node) and not mask.meta["val"].is_floating_point():
        return "boolean attention mask"
    return None


def decompose_attention(program: Program) -> tuple[int, dict[str, str]]:
    """Rewrite every scaled_dot_product_attention of `program` in place (see the module docstring);
    (how many were rewritten, {node name: why kept} for the others). The Program is recompiled."""
    graph = program.graph
    rewritten, kept = 0, {}
    for node in [n for n in graph.nodes if n.op == "call_function" and n.target is SDPA]:
        reason = why_kept(node)
        if reason:
            kept[node.name] = reason
            continue
        _rewrite(graph, node)
        rewritten += 1
    if rewritten:
        program.recompile()
    return rewritten, kept


def _rewrite(graph: torch.fx.Graph, node: torch.fx.Node) -> None:
    query, key, value = node.args[:3]
    options = _options(node)
    scale = options["scale"] if options["scale"] is not None else 1.0 / math.sqrt(query.meta["val"].shape[-1])
    with graph.inserting_before(node):
        key_t = graph.call_function(aten.transpose.int, (key, -2, -1))
        scores = graph.call_function(aten.matmul.default, (query, key_t))
        scores = graph.call_function(aten.mul.Tensor, (scores, float(scale)))
        if options["attn_mask"] is not None:
            scores = graph.call_function(aten.add.Tensor, (scores, options["attn_mask"]))
        probabilities = graph.call_function(aten.softmax.int, (scores, -1))
        output = graph.call_function(aten.matmul.default, (probabilities, value))
    output.meta.update({k: v for k, v in node.meta.items() if k in ("stack_trace", "nn_module_stack")})
    node.replace_all_uses_with(output)
    graph.erase_node(node)
