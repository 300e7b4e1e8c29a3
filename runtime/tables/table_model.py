"""A latency table's entries side by side in one ONNX model, so that one run times every entry once
(OnnxRuntimeLayerTimer.time_all). Each entry is its one-layer model (layer_models.layer_model), its names prefixed,
its input written by a lead-in just before it, as a layer's input is written by the layer before it in a model.

Why together: a lone layer run again and again finds its weights in the caches, where in a whole model the rest
of the model's weights passed through them since its last run. ConvNeXt-T's last-stage MLP layers read faster
alone than in the model: a table of warm layers undervalued cutting the layers with the most weights, and the channels
it chose swung from build to build between cutting ConvNeXt-T's last stage and not. Run together,
each entry's weights have been pushed out by all the other entries' since its last run, as by a model's
(docs/benchmarks/latency-aware-choice.md, "How a table is timed").
"""

from __future__ import annotations

import onnx
from onnx import helper

from prunefx.graph.channels.timed_layers import TimedLayer
from prunefx.runtime.tables.layer_models import IR_VERSION, OPSET, layer_feed, layer_model

LEAD = "lead"  # the name (after an entry's prefix) of the lead-in's output: its node's time is not the entry's


def prefix_of(index: int) -> str:
    return f"e{index}_"


def entry_of(node: str) -> int | None:
    """The index of the entry a node (as ONNX Runtime names it after its graph optimisations) belongs to; None for
    its lead-in and for nodes of no entry."""
    head, sep, rest = node.partition("_")
    if not sep or not head.startswith("e") or not head[1:].isdigit() or rest.startswith(LEAD):
        return None
    return int(head[1:])


def table_model(entries: list[TimedLayer]) -> tuple[onnx.ModelProto, dict]:
    """The model running every entry, and its feed: entry i's inputs and names under prefix_of(i). Each entry is
    copied into the one graph as it is made and dropped: the weights are held once (a table's hundreds of MB), not
    once in every entry's model and again in the table's."""
    table = helper.make_model(helper.make_graph([], "table", [], []), opset_imports=[helper.make_opsetid("", OPSET)],
                              ir_version=IR_VERSION)
    feed = {}
    for index, layer in enumerate(entries):
        convolution, prefix = layer.kind == "conv2d", prefix_of(index)
        graph = onnx.compose.add_prefix(layer_model(layer, lead_in=convolution), prefix, inplace=True).graph
        if not convolution:  # a lead-in writes x (its values negated: a layer's time does not depend on them)
            _rename_input(graph, f"{prefix}x", f"{prefix}source")
            table.graph.node.append(helper.make_node("Neg", [f"{prefix}source"], [f"{prefix}x"], name=f"{prefix}{LEAD}"))
        for number, node in enumerate(graph.node):
            node.name = node.name or f"{prefix}{LEAD if node.output[0] == prefix + LEAD else 'n'}{number}"
        for field in ("node", "input", "output", "initializer"):
            getattr(table.graph, field).extend(getattr(graph, field))
        feed.update({f"{prefix}{name}" if convolution or name != "x" else f"{prefix}source": value
                     for name, value in layer_feed(layer).items()})
    return table, feed


def _rename_input(graph: onnx.GraphProto, old: str, new: str) -> None:
    for value in graph.input:
        if value.name == old:
            value.name = new
