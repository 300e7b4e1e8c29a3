"""Second-order compensation of removed input channels (the OBS / least-squares update, as in CAP and
SparseGPT, applied to whole input channels).

When channels are removed, every layer that *reads* them (a consumer) loses input columns. Before the
columns are sliced away, the remaining weights of each consumer are updated so that its output on the
calibration data changes as little as possible. Write the consumer as Y = X M^T: M is its weight as a
matrix [outputs x columns], X [rows x columns] its input over the calibration data (a linear layer: one
row per token/image, one column per input feature; a convolution: X is the unfolded input, one row
per output position of every image, one column per (input channel, kernel tap), in the order of
M = W.reshape(out, -1)). Split the columns into removed R and kept K; the new kept weights solve

    min over D  || X_K D^T - X_R M_R^T ||^2 + lam ||D||^2           (D = M_K' - M_K)

with H = X^T X, whose solution is

    M_K' = M_K + M_R H_RK (H_KK + lam I)^-1.

This is the OBS update of removing the columns R at once, restricted to the layer (the layer-input
Hessian of the squared output error is 2 X^T X). `lam = damping * mean(diag H)` keeps H_KK invertible
(SparseGPT's 1 % by default); it makes the update a ridge regression that shrinks D.
- Removed channels whose activations are all zero carry no signal: H_RK = 0, so D = 0 and the
  removal is exact, with or without compensation.
- Removed channels that are linear combinations of kept ones (X_R = X_K A) are reproduced exactly as
  lam -> 0 (D = M_R A^T), with an error that grows with lam.
Everything is solved in float64 (Cholesky of H_KK + lam I).

Every consumer is compensated on its own with the inputs of the *dense* network (all Hessians are
gathered before any weight changes): coupled groups, where one removal touches several consumers (a
residual stream read by every block), need nothing special, each consumer gets its own update.
Attention projections are linear layers: the q/k/v projections reading a pruned embedding and the
output projection reading pruned heads are compensated like any linear layer.

Consumers: 2-D convolutions with groups = 1, linear layers, and mm/matmul/addmm with a 2-D weight
tensor ([in, out]). Skipped, with the reason reported: grouped and depthwise convolutions (a
depthwise conv's input channel goes with its output channel: nothing is left to compensate with),
other convolutions (1-D, 3-D, transposed), weights read by several layers, and layers that lose every
input column. Non-goals: updating biases (a constant part of the removed channels is reproduced only as
far as the kept channels can; recalibrating batch norms absorbs mean shifts), compensating for the
changes pruning makes *upstream* of a consumer (its kept inputs are taken as they were in the dense
network), and sequential (layer-by-layer, pruned-input) calibration.

Cost: one H of (columns x columns) float64 per distinct layer input (shared by the consumers that
read the same tensor the same way), gathered in passes over the calibration data that hold at most
`_HESSIAN_BUDGET` bytes of H at a time (`iter_hessians`).

The `obs` importance (graph/channel_saliency.py) scores channels with the same machinery: which layers
read which channels (`layer_inputs`), their Hessians (`iter_hessians`, with a cache through which
remove_channels gathers them once for both), the damping (`damped_inverse`) and the weight matrices.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from prunefx.graph.activations import run_tapped, tap_nodes, within_budget
from prunefx.graph.attributes import get_tensor, set_tensor
from prunefx.graph.channel_analysis import ChannelAnalysis
from prunefx.graph.channel_removal import expand_removed

aten = torch.ops.aten
_HESSIAN_BUDGET = 1 << 29  # bytes of float64 Hessians held at once (512 MiB)
_CONVOLUTIONS = {aten.conv2d.default, aten.conv2d.padding, aten.convolution.default}
_OTHER_CONVOLUTIONS = {aten.conv1d.default, aten.conv3d.default, aten.conv1d.padding, aten.conv3d.padding,
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
    if node.target in _OTHER_CONVOLUTIONS:
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
    stride = _pair(_argument(node, 3, "stride", 1))
    dilation = _pair(_argument(node, 5, "dilation", 1))
    padding = _padding(_argument(node, 4, "padding", 0), kernel, dilation)
    spec = InputSpec(source.name, kernel, stride, padding, dilation)
    return LayerInput(node.name, np.repeat(classes, kernel[0] * kernel[1]), weight.target, spec)


def _pair(value) -> tuple[int, int]:
    values = [int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)]
    return (values[0], values[-1])


def _padding(value, kernel, dilation) -> tuple[int, int, int, int]:
    """Padding as (left, right, top, bottom); 'same' pads the extra pixel at the end, as torch does."""
    if value == "valid":
        return (0, 0, 0, 0)
    if value == "same":
        totals = [d * (k - 1) for k, d in zip(kernel, dilation)]
        (top, bottom), (left, right) = ((t // 2, t - t // 2) for t in totals)
        return (left, right, top, bottom)
    height, width = _pair(value)
    return (width, width, height, height)


# --- gathering H = X^T X -------------------------------------------------------------------------------

def iter_hessians(module: torch.fx.GraphModule, specs: list[InputSpec], batches, *, cache: dict | None = None):
    """(spec, H, rows) for every spec over all batches, in float64: the specs are taken in chunks of at
    most _HESSIAN_BUDGET bytes of H, one pass over the data per chunk, and a chunk's Hessians are
    yielded before the next is gathered, so a caller that drops them holds one chunk at a time.

    `cache` (a dict spec -> (H, rows), for the same module, weights and batches) shares Hessians between
    callers (the `obs` importance and the compensation that follows it): those found in it are not
    gathered again, and those gathered are stored in it (then all are held). Callers must not modify H."""
    if cache is not None:
        for spec in specs:
            if spec in cache:
                yield spec, *cache[spec]
        specs = [spec for spec in specs if spec not in cache]
    columns = {spec: _columns(module, spec) for spec in specs}
    for chunk in within_budget(specs, lambda spec: 8 * columns[spec] ** 2, _HESSIAN_BUDGET):
        sources = sorted({spec.source for spec in chunk})
        tapped, position = tap_nodes(module, sources), {name: index for index, name in enumerate(sources)}
        sums = {spec: [0, None] for spec in chunk}
        for batch in batches:
            values = run_tapped(tapped, batch)
            for spec in chunk:
                x = spec.rows(values[position[spec.source]]).double()
                sums[spec][0] += x.shape[0]
                sums[spec][1] = x.t() @ x if sums[spec][1] is None else sums[spec][1] + x.t() @ x
        for spec in chunk:
            rows, hessian = sums.pop(spec)
            if cache is not None:
                cache[spec] = (hessian, rows)
            yield spec, hessian, rows


def gather_hessians(module: torch.fx.GraphModule, specs: list[InputSpec], batches) -> dict[InputSpec, tuple]:
    """(H, rows) of every spec over all batches (see iter_hessians), all held at once."""
    return {spec: (hessian, rows) for spec, hessian, rows in iter_hessians(module, specs, batches)}


def _columns(module: torch.fx.GraphModule, spec: InputSpec) -> int:
    node = next(n for n in module.graph.nodes if n.name == spec.source)
    channels = int(node.meta["val"].shape[1 if spec.kernel else -1])
    return channels * (spec.kernel[0] * spec.kernel[1] if spec.kernel else 1)


# --- the update ------------------------------------------------------------------------------------------

def second_order_update(matrix: torch.Tensor, hessian: torch.Tensor, removed: np.ndarray,
                        damping: float) -> tuple[torch.Tensor, dict]:
    """M_K' = M_K + M_R H_RK (H_KK + lam I)^-1 with lam = damping * mean(diag H), in float64.

    Returns the new matrix (removed columns unchanged: slicing drops them) and the layer-output error
    on the calibration data, relative to the output energy trace(M H M^T), without and with the update:
    the error of a change D of the columns is trace(D H D^T)."""
    removed_t = torch.from_numpy(removed).to(matrix.device)
    keep_t = ~removed_t
    energy = output_energy(matrix, hessian)
    lam = damping_term(hessian, damping)
    if lam is None:  # the input is zero on all calibration data: nothing to compensate, nothing lost
        return matrix, {"error_without": 0.0, "error_with": 0.0}
    h_kk = hessian[keep_t][:, keep_t] + lam * torch.eye(int(keep_t.sum()), dtype=hessian.dtype, device=hessian.device)
    rhs = hessian[keep_t][:, removed_t] @ matrix[:, removed_t].t()  # H_KR M_R^T: [kept, outputs]
    factor, info = torch.linalg.cholesky_ex(h_kk)
    # damping 0 on rank-deficient inputs: least squares picks a solution where Cholesky cannot
    delta = torch.cholesky_solve(rhs, factor) if int(info) == 0 else torch.linalg.lstsq(h_kk, rhs).solution
    updated = matrix.clone()
    updated[:, keep_t] += delta.t()
    return updated, {"error_without": _error(matrix, matrix, hessian, removed_t) / max(energy, 1e-300),
                     "error_with": _error(updated, matrix, hessian, removed_t) / max(energy, 1e-300)}


def output_energy(matrix: torch.Tensor, hessian: torch.Tensor) -> float:
    """trace(M H M^T): the squared layer output (without bias) summed over the calibration data."""
    return float((matrix @ hessian * matrix).sum())


def damping_term(hessian: torch.Tensor, damping: float) -> float | None:
    """lam = damping * mean(diag H), or None when H is zero (the input is zero on all calibration data)."""
    scale = float(hessian.diagonal().mean())
    return damping * scale if scale > 0 else None


def damped_inverse(hessian: torch.Tensor, damping: float) -> torch.Tensor | None:
    """(H + lam I)^-1 in float64 (None when H is zero). With damping 0 on a rank-deficient H, the
    smallest jitter (1e-10, 1e-8, ... of mean(diag H)) that makes it positive definite is added."""
    lam = damping_term(hessian, damping)
    if lam is None:
        return None
    scale = float(hessian.diagonal().mean())
    eye = torch.eye(hessian.shape[0], dtype=hessian.dtype, device=hessian.device)
    for jitter in (0.0, 1e-10, 1e-8, 1e-6, 1e-4):
        factor, info = torch.linalg.cholesky_ex(hessian + (lam + jitter * scale) * eye)
        if int(info) == 0:
            return torch.cholesky_inverse(factor)
    return torch.linalg.pinv(hessian + lam * eye, hermitian=True)


def _error(updated: torch.Tensor, original: torch.Tensor, hessian: torch.Tensor, removed: torch.Tensor) -> float:
    """trace(D H D^T) with D = (updated with the removed columns zeroed) - original."""
    change = updated.clone()
    change[:, removed] = 0
    change -= original
    return float((change @ hessian * change).sum())


def compensate_removed_inputs(module: torch.fx.GraphModule, analysis: ChannelAnalysis, removed_classes: set[int],
                              batches, *, damping: float = 0.01, hessians: dict | None = None) -> dict:
    """Update the weights of every consumer of `removed_classes` (before they are sliced away) and return
    statistics: the layers compensated with their relative output errors on the calibration data, and
    the layers skipped with their reasons. `hessians`: a cache shared with the `obs` importance (see
    iter_hessians)."""
    consumers, skipped = find_consumers(module, analysis, removed_classes)
    by_spec: dict[InputSpec, list[Consumer]] = {}
    for consumer in consumers:
        by_spec.setdefault(consumer.spec, []).append(consumer)
    updates, layers = {}, {}
    # Every H comes from the dense network: the updates are stored only once all are computed.
    for spec, hessian, rows in iter_hessians(module, list(by_spec), batches, cache=hessians):
        for consumer in by_spec[spec]:
            matrix = consumer.matrix(module).to(hessian.device)
            updated, errors = second_order_update(matrix, hessian, consumer.removed_columns, damping)
            updates[consumer.node] = (consumer, updated)
            layers[consumer.node] = {"layer": consumer.node, "weight": consumer.weight, "rows": rows,
                                     "columns": int(consumer.removed_columns.size),
                                     "columns_removed": int(consumer.removed_columns.sum()), **errors}
    updates = [updates[c.node] for c in consumers]
    layers = [layers[c.node] for c in consumers]
    for consumer, matrix in updates:
        consumer.store(module, matrix)
    return {"damping": damping, "compensated": layers, "skipped": skipped,
            "images": sum(int(b[0].shape[0]) for b in batches)}
