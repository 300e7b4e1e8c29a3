"""The cleanup of an exported ONNX graph before it is written: constants folded, dead nodes dropped, nodes
sorted, inputs and outputs named input_N / output_N, a zero Pad before a MaxPool made safe from ONNX Runtime's
Pad fusion (runtime/onnx/zero_pads_before_max_pools.py), and the exporter's provenance of each node kept
(onnx-graphsurgeon does the work; runtime/onnx/export.py calls it)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.ir.tensor import LazyValues
from onnx_graphsurgeon.logger import G_LOGGER

from prunefx.runtime.errors import OnnxExportError
from prunefx.runtime.onnx.zero_pads_before_max_pools import guard_zero_pads_before_max_pools

# Where a weight kept apart during the export is said to be: never a file, every such reference is replaced
# in clean_graph.
APART = "prunefx-weight-kept-apart"


def clean_graph(model: onnx.ModelProto, weights: dict[str, np.ndarray]) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """Fold constants, drop dead nodes, sort, and give inputs and outputs their stable names. The weights kept
    apart (export.py's _weights_apart) are values for the folding; those still in the graph afterwards stay references
    in the cleaned model, and come back beside it (name -> array) for _save to write from."""
    references = {tensor.name: tensor for tensor in model.graph.initializer if tensor.name in weights}
    graph = gs.import_onnx(model)
    for tensor in graph.tensors().values():
        if isinstance(tensor, gs.Constant) and tensor.name in weights:
            tensor.values = weights[tensor.name]
    with _graph_surgeon_errors_only():
        graph.fold_constants()
    guard_zero_pads_before_max_pools(graph)  # ONNX Runtime's Pad fusion would change what they compute
    graph.cleanup()
    graph.toposort()
    returned = {id(tensor) for tensor in graph.outputs}  # renamed below: such a weight is written inline
    apart = {}
    for tensor in graph.tensors().values():
        if not isinstance(tensor, gs.Constant) or tensor.name not in weights:
            continue
        if tensor.name in references and tensor.values is weights[tensor.name] and id(tensor) not in returned:
            tensor.values = LazyValues(references[tensor.name])  # exported as the reference: no copy of the data
            apart[tensor.name] = weights[tensor.name]
        else:
            tensor.data_location = None  # a weight folding gave new values, or the model returns: written inline
    _rename(graph.inputs, "input")
    _rename(graph.outputs, "output")
    cleaned = gs.export_onnx(graph)
    _keep_provenance(model, cleaned)
    if any(entry.value == APART for tensor in cleaned.graph.initializer if tensor.name not in apart
           for entry in tensor.external_data):
        raise OnnxExportError("a weight kept apart during the export has no data to write")
    return cleaned, apart


@contextlib.contextmanager
def _graph_surgeon_errors_only() -> Iterator[None]:
    """graph-surgeon warns of every constant above 1 MiB it folds (each attention layer's relative position
    bias, gathered from its table once here instead of at every run): its own heuristic, nothing a user can
    act on, printed to stdout. Its errors still show."""
    before = G_LOGGER.severity
    G_LOGGER.severity = G_LOGGER.ERROR
    try:
        yield
    finally:
        G_LOGGER.severity = before


# The exporter's per-node record of where a node came from (module scope, fx node, rewrite rule):
# runtime/tensorrt/layer_profile.py maps TensorRT layers back to Program nodes with it. Stack traces
# (absolute paths of this machine) are deliberately not kept in a deployable file.
PROVENANCE_KEYS = ("pkg.torch.onnx.name_scopes", "pkg.torch.onnx.class_hierarchy", "pkg.onnxscript.rewriter.rule_name")


def _keep_provenance(original: onnx.ModelProto, cleaned: onnx.ModelProto) -> None:
    # graph-surgeon drops node metadata_props; node names survive, so copy them back by name.
    kept = {node.name: [entry for entry in node.metadata_props if entry.key in PROVENANCE_KEYS]
            for node in original.graph.node}
    for node in cleaned.graph.node:
        node.metadata_props.extend(kept.get(node.name, []))


def _rename(tensors: list[gs.Tensor], prefix: str) -> None:
    # graph-surgeon nodes refer to tensor objects, not names, so renaming the tensor is enough.
    for index, tensor in enumerate(tensors):
        tensor.name = f"{prefix}_{index}"
