"""Which layers read which channels, and the Hessians H = X^T X of their inputs on calibration data.

A layer that reads channels through a weight (a 2-D convolution, a linear layer, mm/matmul/addmm with
a 2-D weight tensor) is a `LayerInput`: the channel class of each column of its weight matrix M
[outputs x columns] and how to build the rows of its input X (`InputSpec`: a matrix layer's input
rows, a convolution's unfolded patches, one column per (input channel, kernel tap) in the order of
M = W.reshape(out, -1)). Layers that read channels but whose weights cannot be updated say why.

Shared by second-order compensation (graph/channels/compensation.py), the `obs` channel importance
(graph/channels/saliency.py) and the N:M masks' Hessians (graph/sparsity/nm_hessians.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from prunefx.graph.activations import run_tapped, tap_nodes, within_budget
from prunefx.graph.attributes import get_tensor, set_tensor
from prunefx.graph.channels.analysis import ChannelAnalysis
from prunefx.graph.channels.removal import expand_removed
from prunefx.graph.symmetric_product import add_upper_gram, mirror_upper

aten = torch.ops.aten
_HESSIAN_BUDGET = 1 << 29  # bytes of float64 Hessians held at once (512 MiB)
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

    def columns(self, classes: np.ndarray) -> np.ndarray:
        """The columns that carry any of `classes` (a boolean mask over the columns)."""
        return np.isin(self.column_classes, classes)


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


# --- gathering H = X^T X -------------------------------------------------------------------------------

KEEP_ROWS = 0.5  # X is kept beside H while it has at most this many rows per column (see LayerRows)


@dataclass(frozen=True)
class LayerRows:
    """How many calibration rows a layer input's H was summed over, and those rows X [count, columns]
    (float64) when there are at most KEEP_ROWS per column (ResNet-50's last 3x3 convs: 980 rows of 4608
    columns from 20 images): H then has low rank, and its damped inverse (Woodbury) and a layer's output
    energy ||X M^T||^2 cost a fraction of what they cost from H."""

    count: int
    kept: torch.Tensor | None = None


def iter_hessians(module: torch.fx.GraphModule, specs: list[InputSpec], batches, *, cache: dict | None = None,
                  from_rows: bool = False):
    """(spec, H, LayerRows) for every spec over all batches, in float64: the specs are taken in chunks of
    at most _HESSIAN_BUDGET bytes of H, one pass over the data per chunk, and a chunk's Hessians are
    yielded before the next is gathered, so a caller that drops them holds one chunk at a time.
    `from_rows`: the caller works from the rows where they are kept, and H is None there (not formed).

    `cache` (a dict spec -> (H, LayerRows), for the same module, weights and batches) shares Hessians
    between callers (the `obs` importance and the compensation that follows it): those found in it are
    not gathered again, and those gathered are stored in it (then all are held). Callers must not modify
    H or the rows."""
    if cache is not None:
        for spec in specs:
            if spec in cache:
                hessian, rows = cache[spec]
                if hessian is None and not from_rows:  # gathered for a caller that worked from the rows
                    hessian = rows.kept.t() @ rows.kept
                yield spec, hessian, rows
        specs = [spec for spec in specs if spec not in cache]
    columns = {spec: _columns(module, spec) for spec in specs}
    # With a cache every H is held anyway: one pass over the data for all of them, not one per chunk.
    budget = _HESSIAN_BUDGET if cache is None else sum(8 * columns[spec] ** 2 for spec in specs)
    for chunk in within_budget(specs, lambda spec: 8 * columns[spec] ** 2, budget):
        sources = sorted({spec.source for spec in chunk})
        tapped, position = tap_nodes(module, sources), {name: index for index, name in enumerate(sources)}
        sums = {spec: GramSum(int(KEEP_ROWS * columns[spec]), gram_of_kept=not from_rows) for spec in chunk}
        for batch in batches:
            values = run_tapped(tapped, batch)
            for spec in chunk:
                sums[spec].add(spec.rows(values[position[spec.source]]))
        for spec in chunk:
            total = sums.pop(spec)
            hessian, rows = total.finish(), LayerRows(total.rows, total.kept_rows())
            if cache is not None:
                cache[spec] = (hessian, rows)
            yield spec, hessian, rows


_PRODUCT_ROWS = 2048   # rows gathered before one product: a deep layer gives few rows per batch (49 per image)
_PRODUCT_BYTES = 1 << 24  # ... or this many bytes of them, so that wide layers do not hold many batches


class GramSum:
    """The running X^T X (float64) of a layer input, batch by batch. Rows are gathered in a buffer until
    there are _PRODUCT_ROWS of them (or _PRODUCT_BYTES), then multiplied at once: a product over few rows
    (ResNet-50's last convolutions see 49 per image) runs far below matrix-product speed. Added in place:
    `H + x.t() @ x` would hold another copy of a matrix that reaches 1.2 GB for a wide layer (a U-Net
    decoder's first conv reads 12384 columns); only the upper block triangle is summed
    (graph/symmetric_product.py).

    The rows themselves (float64) are kept while there are at most `keep_up_to` of them; without
    `gram_of_kept`, their product is put off until there are more, and never formed if there are not
    (a caller that works from the rows)."""

    def __init__(self, keep_up_to: int = 0, *, gram_of_kept: bool = True):
        self.rows, self.gram, self.pending = 0, None, []
        self.keep_up_to, self.gram_of_kept = keep_up_to, gram_of_kept
        self.kept: list[torch.Tensor] | None = [] if keep_up_to > 0 else None

    def add(self, x: torch.Tensor) -> None:
        """Add one batch's rows X [rows, columns]."""
        self.rows += x.shape[0]
        if self.rows > self.keep_up_to and self.kept is not None:
            kept, self.kept = self.kept, None
            if not self.gram_of_kept:  # too many rows to keep after all: their product is due
                for rows in kept:
                    self.gram = add_upper_gram(self.gram, rows)
        self.pending.append(x.detach())
        if (sum(rows.shape[0] for rows in self.pending) >= _PRODUCT_ROWS
                or sum(rows.numel() * rows.element_size() for rows in self.pending) >= _PRODUCT_BYTES):
            self._multiply_pending()

    def finish(self) -> torch.Tensor | None:
        """H; None when no row was added, or the rows were kept without their product."""
        self._multiply_pending()
        return None if self.gram is None else mirror_upper(self.gram)

    def kept_rows(self) -> torch.Tensor | None:
        """All rows added, float64 [rows, columns], when they were kept (after finish)."""
        return torch.cat(self.kept) if self.kept else None

    def _multiply_pending(self) -> None:
        if not self.pending:
            return
        x = torch.cat(self.pending).double()
        self.pending = []
        if self.kept is not None:
            self.kept.append(x)
            if not self.gram_of_kept:
                return
        self.gram = add_upper_gram(self.gram, x)


def gather_hessians(module: torch.fx.GraphModule, specs: list[InputSpec], batches) -> dict[InputSpec, tuple]:
    """(H, LayerRows) of every spec over all batches (see iter_hessians), all held at once."""
    return {spec: (hessian, rows) for spec, hessian, rows in iter_hessians(module, specs, batches)}


def _columns(module: torch.fx.GraphModule, spec: InputSpec) -> int:
    node = next(n for n in module.graph.nodes if n.name == spec.source)
    channels = int(node.meta["val"].shape[1 if spec.kernel else -1])
    return channels * (spec.kernel[0] * spec.kernel[1] if spec.kernel else 1)
