"""Which layers read which channels, and the Hessians H = X^T X of their inputs on calibration data.

A layer that reads channels through a weight (a 2-D convolution, a linear layer, mm/matmul/addmm with
a 2-D weight tensor) is a `LayerInput`: the channel class of each column of its weight matrix M
[outputs x columns] and how to build the rows of its input X (`InputSpec`: a matrix layer's input
rows, a convolution's unfolded patches, one column per (input channel, kernel tap) in the order of
M = W.reshape(out, -1)). Layers that read channels but whose weights cannot be updated say why.

Shared by second-order compensation (graph/channels/compensation.py), the `obs` channel importance
(graph/channels/saliency.py) and the N:M masks' Hessians (graph/sparsity/nm_hessians.py); the Hessians
themselves are gathered by graph/layer_hessians.py.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from prunefx.graph.attributes import get_tensor, set_tensor
from prunefx.graph.channels.analysis import ChannelAnalysis
from prunefx.graph.channels.removal import expand_removed

aten = torch.ops.aten
_CONVOLUTIONS = {aten.conv2d.default, aten.conv2d.padding, aten.convolution.default}
OTHER_CONVOLUTIONS = {aten.conv1d.default, aten.conv3d.default, aten.conv1d.padding, aten.conv3d.padding,
                       aten.conv_transpose1d.default, aten.conv_transpose2d.input, aten.conv_transpose3d.input}
# operator -> (index of the layer input, index of the weight, the weight's input dim)
_MATRIX_LAYERS = {aten.linear.default: (0, 1, 1), aten.mm.default: (0, 1, 0), aten.matmul.default: (0, 1, 0),
                  aten.addmm.default: (1, 2, 0)}


@dataclass(frozen=True)
class InputSpec:
    """How a layer turns its input tensor into the rows of X: the input node, and for a convolution the
    unfolding (padding as (left, right, top, bottom), F.pad's order; kernel, stride, dilation as pairs)."""

    source: str
    kernel: tuple[int, int] | None = None
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int, int, int] = (0, 0, 0, 0)
    dilation: tuple[int, int] = (1, 1)

    def rows(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel is None:  # a matrix layer contracts the last dim
            return x.reshape(-1, x.shape[-1])
        if any(self.padding):
            x = F.pad(x, self.padding)
        patches = F.unfold(x, self.kernel, dilation=self.dilation, stride=self.stride)  # [N, C * taps, L]
        return patches.transpose(1, 2).reshape(-1, patches.shape[1])


def weight_matrix(module: torch.nn.Module, weight: str, *, transposed: bool = False) -> torch.Tensor:
    """A layer's weight as M [outputs x columns] in float64 (a conv's reshaped, an [in, out] one transposed)."""
    value = get_tensor(module, weight).detach().double()
    return value.t() if transposed else value.reshape(value.shape[0], -1)


@dataclass
class Consumer:
    """A layer that reads removed channels: its weight as a matrix M [outputs x columns] is
    `weight` (linear, conv reshaped) or its transpose (`transposed`: an [in, out] weight of mm/matmul)."""

    node: str
    weight: str
    spec: InputSpec
    removed_columns: np.ndarray  # bool, one per column of M
    transposed: bool = False

    def matrix(self, module: torch.nn.Module) -> torch.Tensor:
        return weight_matrix(module, self.weight, transposed=self.transposed)

    def store(self, module: torch.nn.Module, matrix: torch.Tensor) -> None:
        old = get_tensor(module, self.weight)
        value = matrix.t() if self.transposed else matrix.reshape(old.shape)
        set_tensor(module, self.weight, value.to(dtype=old.dtype, device=old.device).contiguous())


# --- which layers read channels ------------------------------------------------------------------------

_NO_COLUMNS = np.zeros(0, dtype=np.int64)


@dataclass(frozen=True)
class LayerInput:
    """A layer that reads channels through a weight: the channel class of each column of its weight
    matrix (a convolution: each input channel repeated over its kernel taps), and either how to build
    the rows of X (`spec`) or, for a layer whose weights cannot be updated, the reason (`problem`)."""

    node: str
    column_classes: np.ndarray
    weight: str | None = None
    spec: InputSpec | None = None
    transposed: bool = False
    problem: str | None = None

    def column_indices(self, classes: np.ndarray) -> np.ndarray:
        """The indices of the columns that carry any of `classes`, ascending. Read once per channel of every
        group: the columns are grouped by class once (_columns_by_class), so each read costs its own columns
        alone, where a scan of every column per channel grew as channels x columns (a ViT-L MLP: 4096 x 4096)."""
        by_class = self._columns_by_class
        if classes.size == 1:  # most channels: one class, its columns looked up (a ViT-L reads 150k of them)
            return by_class.get(int(classes[0]), _NO_COLUMNS)
        found = [by_class.get(cls, _NO_COLUMNS) for cls in np.unique(classes).tolist()]
        return np.sort(np.concatenate(found or [_NO_COLUMNS]))

    @functools.cached_property
    def _columns_by_class(self) -> dict[int, np.ndarray]:
        """class -> its columns, ascending (a stable sort of the columns by class, cut where the class changes);
        shared by every caller, which must not write them."""
        order = np.argsort(self.column_classes, kind="stable")
        classes, starts = np.unique(self.column_classes[order], return_index=True)
        return dict(zip(classes.tolist(), np.split(order, starts[1:])))


def layer_inputs(module: torch.fx.GraphModule, analysis: ChannelAnalysis) -> list[LayerInput]:
    """Every layer that reads labelled channels, in graph order: 2-D convolutions and matrix layers with
    a weight tensor (usable: `spec` set), and the layers that read channels but cannot be updated
    (`problem` set). Shared by compensation (which columns a removal takes from each layer) and by
    the `obs` importance (which layers a channel's removal hurts)."""
    weight_uses: dict[str, int] = {}
    for node in module.graph.nodes:
        if node.op == "get_attr":
            weight_uses[node.target] = weight_uses.get(node.target, 0) + len(node.users)
    found = (_layer_input(node, analysis, weight_uses) for node in module.graph.nodes if node.op == "call_function")
    return [layer for layer in found if layer is not None]


def find_consumers(module: torch.fx.GraphModule, analysis: ChannelAnalysis,
                   removed_classes: set[int]) -> tuple[list[Consumer], list[dict]]:
    """Consumers of `removed_classes` (grown to whole heads etc. by expand_removed) that can be
    compensated, and the layers that read removed channels but cannot, each with its reason."""
    removed = np.zeros(int(analysis.classes.max()) + 1, dtype=bool)
    removed[sorted(expand_removed(analysis, removed_classes))] = True
    consumers, skipped = [], []
    for layer in layer_inputs(module, analysis):
        gone = removed[layer.column_classes]
        if not gone.any():
            continue
        reason = layer.problem or ("every input channel is removed" if gone.all() else None)
        if reason:
            skipped.append({"layer": layer.node, "reason": reason})
        else:
            consumers.append(Consumer(layer.node, layer.weight, layer.spec, gone, transposed=layer.transposed))
    return consumers, skipped


def _classes(analysis: ChannelAnalysis, node, dim: int) -> np.ndarray | None:
    labels = analysis.node_labels.get(node) if isinstance(node, torch.fx.Node) else None
    if not isinstance(labels, list) or len(labels) <= dim or not isinstance(labels[dim], np.ndarray):
        return None
    return analysis.classes[labels[dim]]


def _layer_input(node, analysis, weight_uses) -> LayerInput | None:
    if node.target in _CONVOLUTIONS:
        return _convolution(node, analysis, weight_uses)
    if node.target in OTHER_CONVOLUTIONS:
        classes = _classes(analysis, node.args[0], 1)
        return None if classes is None else LayerInput(
            node.name, classes, problem=f"{node.target} is not compensated (2-D convolutions only)")
    if node.target not in _MATRIX_LAYERS:
        return None
    input_index, weight_index, in_dim = _MATRIX_LAYERS[node.target]
    weight = node.args[weight_index] if len(node.args) > weight_index else None
    if not isinstance(weight, torch.fx.Node) or weight.op != "get_attr" or weight.meta["val"].dim() != 2:
        return None  # an activation-activation product (attention scores): no weight to update
    classes = _classes(analysis, weight, in_dim)
    if classes is None:
        return None
    if weight_uses.get(weight.target, 0) > 1:
        return LayerInput(node.name, classes, problem=_shared(weight))
    return LayerInput(node.name, classes, weight.target, InputSpec(node.args[input_index].name),
                      transposed=in_dim == 0)


def _shared(weight: torch.fx.Node) -> str:
    return f"weight {weight.target} is read by several layers"


def _argument(node, index: int, name: str, default):
    return node.args[index] if len(node.args) > index else node.kwargs.get(name, default)


def _convolution(node, analysis, weight_uses) -> LayerInput | None:
    source, weight = node.args[0], node.args[1]
    classes = _classes(analysis, source, 1)
    if classes is None:
        return None
    convolution = node.target is aten.convolution.default
    groups = _argument(node, 8 if convolution else 6, "groups", 1)
    if convolution and _argument(node, 6, "transposed", False):
        return LayerInput(node.name, classes, problem="transposed convolution is not compensated")
    if groups != 1:
        kind = "depthwise" if groups == classes.size else "grouped"
        return LayerInput(node.name, classes, problem=(
            f"{kind} convolution (groups={groups}) is not compensated: its input channels go with its "
            f"output channels" + ("" if kind == "depthwise" else " per group")))
    if not isinstance(weight, torch.fx.Node) or weight.op != "get_attr" or weight.meta["val"].dim() != 4:
        return LayerInput(node.name, classes, problem="not a 2-D convolution with a weight tensor")
    if weight_uses.get(weight.target, 0) > 1:
        return LayerInput(node.name, classes, problem=_shared(weight))
    kernel = tuple(int(k) for k in weight.meta["val"].shape[2:])
    stride = as_pair(_argument(node, 3, "stride", 1))
    dilation = as_pair(_argument(node, 5, "dilation", 1))
    padding = unfold_padding(_argument(node, 4, "padding", 0), kernel, dilation)
    spec = InputSpec(source.name, kernel, stride, padding, dilation)
    return LayerInput(node.name, np.repeat(classes, kernel[0] * kernel[1]), weight.target, spec)


def as_pair(value) -> tuple[int, int]:
    values = [int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)]
    return (values[0], values[-1])


def unfold_padding(value, kernel, dilation) -> tuple[int, int, int, int]:
    """Padding as (left, right, top, bottom); 'same' pads the extra pixel at the end, as torch does."""
    if value == "valid":
        return (0, 0, 0, 0)
    if value == "same":
        totals = [d * (k - 1) for k, d in zip(kernel, dilation)]
        (top, bottom), (left, right) = ((t // 2, t - t // 2) for t in totals)
        return (left, right, top, bottom)
    height, width = as_pair(value)
    return (width, width, height, height)
