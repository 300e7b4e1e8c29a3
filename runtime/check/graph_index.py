"""The graph index `prunefx check`'s rules read (runtime/check/rules.py): each tensor's producer and consumers,
the constants, and the walks the rules make along them (to the DequantizeLinear feeding a layer, to where a
tensor comes from, to whether it reaches a graph output).

The graph is acyclic (runtime/check/readiness.py refuses a cycle). Every walk along producers or consumers is
memoised, so a chain of 100,000 nodes in front of 2,000 layers is walked once, not once per layer. A constant
is converted only after its declared size passed the 2**28-element bound, and one whose data does not fill
its shape is one PrunefxError line.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import onnx
from onnx import numpy_helper

from prunefx.graph.errors import PrunefxError, printable
from prunefx.graph.safety.tensor_bound import MAX_TENSOR_ELEMENTS

LAYERS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
SHAPE_ONLY = ("Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity")


class GraphIndex:
    def __init__(self, model: onnx.ModelProto):
        self.model = model
        self.nodes = list(model.graph.node)
        self.producer = {output: node for node in self.nodes for output in node.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for node in self.nodes:
            for name in node.input:
                self.consumers[name].append(node)
        self.constants = {init.name: init for init in model.graph.initializer}
        for node in self.nodes:
            if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
                self.constants[node.output[0]] = node.attribute[0].t
        self.inputs = {value.name for value in model.graph.input if value.name not in self.constants}
        self.outputs = {value.name for value in model.graph.output}
        self._arrays: dict[str, np.ndarray] = {}
        self._before_shapes: dict[str, str] = {}
        self._origins: dict[str, str] = {}
        self._reaches: dict[str, bool] = {}
        self._types: dict[str, int] | None = None

    def value(self, name: str) -> np.ndarray | None:
        """A constant's values; through a DequantizeLinear its integer codes (zeros stay zeros), through a
        Transpose the transposed array; None for a computed tensor."""
        permutations = []
        node = self.producer.get(name)
        while name not in self.constants and node is not None and node.input and \
                node.op_type in ("DequantizeLinear", "Transpose"):
            if node.op_type == "Transpose":
                permutations.append(next((list(attr.ints) for attr in node.attribute if attr.name == "perm"), None))
            name = node.input[0]
            node = self.producer.get(name)
        if name not in self.constants:
            return None
        array = self.array(name)
        for permutation in reversed(permutations):
            try:
                array = np.transpose(array, permutation)
            except ValueError:
                return None  # a Transpose whose perm does not fit: ONNX's checker and the parser refuse it
        return array

    def array(self, name: str) -> np.ndarray:
        """The constant `name` as an array, or one PrunefxError line when its declared shape and its data
        disagree (checked before anything is allocated)."""
        if name not in self._arrays:
            tensor = self.constants[name]
            dims = list(tensor.dims)
            if any(d < 0 for d in dims) or int(np.prod(dims, dtype=object)) > MAX_TENSOR_ELEMENTS:
                raise PrunefxError(f"constant '{printable(name)[:60]}' declares shape {dims[:8]}, more than "
                                   "the limit of 2**28 elements")
            try:
                self._arrays[name] = numpy_helper.to_array(tensor)
            except Exception as error:  # data that does not fill the declared shape, an unknown type
                raise PrunefxError(f"constant '{printable(name)[:60]}' of shape {dims[:8]} does not hold its "
                                   f"data ({type(error).__name__})") from None
        return self._arrays[name]

    def element_types(self) -> dict[str, int]:
        """Every tensor's element type, as the file says it or ONNX's shape inference finds it. Inferred on the
        graph without its weights' data (a ViT-L's 1.2 GB would be copied to infer types it states itself)."""
        if self._types is None:
            try:
                inferred = onnx.shape_inference.infer_shapes(self._without_weight_data()).graph
            except Exception:  # noqa: BLE001 - a graph ONNX cannot infer (or rebuild): the file's own types
                inferred = self.model.graph
            self._types = {value.name: value.type.tensor_type.elem_type
                           for value in (*inferred.value_info, *inferred.input, *inferred.output)}
            self._types.update({name: tensor.data_type for name, tensor in self.constants.items()})
        return self._types

    def _without_weight_data(self) -> onnx.ModelProto:
        """The model with its initializers declared as inputs of their type and shape, holding no data."""
        model, graph = self.model, self.model.graph
        listed = {value.name for value in graph.input}  # older files list their weights as inputs too
        weights = [onnx.helper.make_tensor_value_info(init.name, init.data_type, list(init.dims))
                   for init in graph.initializer if init.name not in listed]
        return onnx.helper.make_model(
            onnx.helper.make_graph(graph.node, graph.name, [*graph.input, *weights], graph.output,
                                   value_info=graph.value_info),
            opset_imports=model.opset_import, functions=model.functions, ir_version=model.ir_version)

    def _walk_back(self, name: str, through: tuple[str, ...], cache: dict[str, str]) -> str:
        """The first tensor before `name`, along first inputs, whose producer's operator is not in `through`;
        memoised for every tensor on the way."""
        path = []
        while name not in cache:
            node = self.producer.get(name)
            if node is None or node.op_type not in through or not node.input:
                cache[name] = name
                break
            path.append(name)
            name = node.input[0]
        end = cache[name]
        for visited in path:
            cache[visited] = end
        return end

    def dequantized(self, name: str) -> onnx.NodeProto | None:
        """The DequantizeLinear that feeds `name`, through shape-only operators; None if there is none."""
        node = self.producer.get(self._walk_back(name, SHAPE_ONLY, self._before_shapes))
        return node if node is not None and node.op_type == "DequantizeLinear" else None

    def origin(self, name: str) -> str:
        """The tensor `name` comes from, through Q/DQ and shape-only operators."""
        return self._walk_back(name, (*SHAPE_ONLY, "QuantizeLinear", "DequantizeLinear"), self._origins)

    def is_int8_layer(self, node: onnx.NodeProto) -> bool:
        return node.op_type in LAYERS and any(self.dequantized(name) for name in node.input[:2])

    def reaches_output(self, name: str) -> bool:
        """Whether `name` is a graph output, or becomes one through shape-only operators and bias adds."""
        path = []
        while name not in self._reaches:
            if name in self.outputs:
                self._reaches[name] = True
                break
            following = self.consumers.get(name, [])
            if len(following) != 1 or not passes_channels(following[0], self) or not following[0].output:
                self._reaches[name] = False
                break
            path.append(name)
            name = following[0].output[0]
        for visited in path:
            self._reaches[visited] = self._reaches[name]
        return self._reaches[name]


def passes_channels(node: onnx.NodeProto, index: GraphIndex) -> bool:
    return node.op_type in SHAPE_ONLY or (node.op_type == "Add" and any(n in index.constants for n in node.input))
