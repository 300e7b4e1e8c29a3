"""A copy of an ExportedProgram whose reshapes of non-contiguous tensors copy explicitly, for the dynamo ONNX exporter.

The exporter decomposes `aten.reshape` into `aten.view` wherever its fake tensors say the input is contiguous,
then reruns the graph on fake tensors to insert type promotions. The two runs can disagree on a layout: the fake
`scaled_dot_product_attention` with an attention mask (relative position bias, Swin's window mask) returns a
(batch, tokens, heads, dim)-strided result in the first and a contiguous (batch, heads, tokens, dim) one in the
second, so `attention.transpose(1, 2).reshape(batch, tokens, width)` becomes a view of a tensor that cannot be
viewed ("Cannot view a tensor with shape ..."). An explicit contiguous clone before each reshape of a tensor that
is not contiguous here fixes the layout in both runs; the reshape copied there anyway, and in ONNX the clone is an
Identity that the exporter's optimiser removes.
"""

from __future__ import annotations

import copy

import torch

_RESHAPES = (torch.ops.aten.reshape.default,)


def contiguous_before_reshapes(exported: torch.export.ExportedProgram) -> torch.export.ExportedProgram:
    """`exported` itself when no reshape reads a non-contiguous tensor, otherwise a copy of it (graph only: the
    weights are shared) with a contiguous clone before each such reshape. `exported` is never changed."""
    if not any(_reads_strided(node) for node in exported.graph.nodes):
        return exported
    module = copy.deepcopy(exported.graph_module)  # lifted weights live in the state dict, not in the module
    for node in list(module.graph.nodes):
        if _reads_strided(node):
            _insert_clone(module.graph, node)
    module.recompile()
    # _update is how torch.export's own passes (run_decompositions) make a program of a new graph: same
    # signature, state dict and constants
    return exported._update(module, exported.graph_signature)


def _reads_strided(node: torch.fx.Node) -> bool:
    """A reshape whose input, as recorded when the graph was exported, is not contiguous."""
    if node.op != "call_function" or node.target not in _RESHAPES:
        return False
    source = node.args[0]
    value = source.meta.get("val") if isinstance(source, torch.fx.Node) else None
    return isinstance(value, torch.Tensor) and not value.is_contiguous()


def _insert_clone(graph: torch.fx.Graph, reshape: torch.fx.Node) -> None:
    source = reshape.args[0]
    assert isinstance(source, torch.fx.Node)  # _reads_strided checked it
    with graph.inserting_before(reshape):
        clone = graph.call_function(torch.ops.aten.clone.default, (source,),
                                    {"memory_format": torch.contiguous_format})
    clone.meta = {key: value for key, value in source.meta.items() if key != "val"}
    clone.meta["val"] = source.meta["val"].clone(memory_format=torch.contiguous_format)
    reshape.replace_input_with(source, clone)
