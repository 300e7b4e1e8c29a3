"""Which layers of a graph can hold N:M sparse weights, and the curvature second-order sparsification
needs: layer-input Hessians X^T X (OBS / SparseGPT) and empirical-Fisher inverses from per-sample
gradients (CAP). The tensor math is in graph/sparsity/nm_masks.py.

Every layer left dense is listed with its reason. The eligibility rules and how per-sample gradients are
formed without autograd: see docs/algorithms.md, 'Eligible layers and curvature'.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torch.utils._pytree as pytree

from prunefx.graph.attributes import get_tensor
from prunefx.graph.layer_hessians import iter_hessians
from prunefx.graph.layer_inputs import OTHER_CONVOLUTIONS, InputSpec, as_pair, unfold_padding
from prunefx.graph.placement import module_device
from prunefx.graph.sparsity.nm_masks import (
    FisherInverse,
    Pattern,
    grouped_hessian,
    grouped_matrix,
    unfold_to_grouped,
)

aten = torch.ops.aten
_CONVOLUTIONS = {aten.conv2d.default: 6, aten.conv2d.padding: 6, aten.convolution.default: 8}  # -> groups index
_MATRIX_PRODUCTS = {aten.mm.default: 1, aten.addmm.default: 2, aten.matmul.default: 1}  # -> weight index


@dataclass(frozen=True)
class SparseLayer:
    """A layer whose weight gets an N:M mask: `node` (the fx node), `weight` (its get_attr target)."""

    node: str
    weight: str
    shape: tuple[int, ...]
    spec: InputSpec

    def to_dict(self) -> dict:
        return {"node": self.node, "weight": self.weight, "shape": list(self.shape)}


def find_sparse_layers(module: torch.fx.GraphModule, *, pattern: Pattern | None, min_channels: int = 16,
                       keep: set[str] = frozenset(), only: set[str] | None = None
                       ) -> tuple[list[SparseLayer], list[dict]]:
    """The eligible layers in graph order, and every other weighted layer with the reason it stays dense.
    `keep` and `only` name nodes or weights (only: consider these and no others)."""
    uses: dict[str, int] = {}
    for node in module.graph.nodes:
        if node.op == "get_attr":
            uses[node.target] = uses.get(node.target, 0) + len(node.users)
    layers, skipped = [], []
    for node in module.graph.nodes:
        weight = _weight_node(node)
        if weight is None:
            computed = _computed_weight(node)
            if computed is not None and (only is None or node.name in only):
                skipped.append({"node": node.name, "weight": computed.name, "reason": "its weight is computed in the "
                                "graph (a scaled or standardised weight), not a stored tensor to sparsify"})
            continue
        names = {node.name, weight.target}
        if only is not None and not names & only:
            continue
        reason = ("kept dense by the 'keep' option" if names & keep
                  else _problem(node, weight, uses, pattern, min_channels))
        if reason:
            skipped.append({"node": node.name, "weight": weight.target, "reason": reason})
        else:
            layers.append(SparseLayer(node.name, weight.target, tuple(weight.meta["val"].shape), _spec(node, weight)))
    return layers, skipped


def _weight_node(node: torch.fx.Node) -> torch.fx.Node | None:
    """The get_attr weight of a convolution, linear layer or matrix product, else None."""
    if node.op != "call_function":
        return None
    if node.target in _CONVOLUTIONS or node.target in OTHER_CONVOLUTIONS or node.target is aten.linear.default:
        index = 1
    elif node.target in _MATRIX_PRODUCTS:
        index = _MATRIX_PRODUCTS[node.target]
    else:
        return None
    weight = node.args[index] if len(node.args) > index else None
    return weight if isinstance(weight, torch.fx.Node) and weight.op == "get_attr" else None


def _computed_weight(node: torch.fx.Node) -> torch.fx.Node | None:
    """The weight of a convolution or linear layer that the graph computes (no get_attr), else None; a matrix
    product of two computed values is no weighted layer (attention's)."""
    if node.op != "call_function" or not (node.target in _CONVOLUTIONS or node.target in OTHER_CONVOLUTIONS
                                          or node.target is aten.linear.default):
        return None
    weight = node.args[1] if len(node.args) > 1 else None
    return weight if isinstance(weight, torch.fx.Node) and weight.op != "get_attr" else None


def _argument(node: torch.fx.Node, index: int, name: str, default):
    return node.args[index] if len(node.args) > index else node.kwargs.get(name, default)


def _problem(node, weight, uses, pattern: Pattern | None, min_channels: int) -> str | None:
    shape = tuple(weight.meta["val"].shape)
    if node.target in _MATRIX_PRODUCTS:
        return f"{node.target}: a weight stored [in, out] is not sparsified (only linear and conv2d)"
    if node.target in OTHER_CONVOLUTIONS or len(shape) not in (2, 4) or (len(shape) == 4) != (node.target in _CONVOLUTIONS):
        return f"{node.target} with a {len(shape)}-D weight: only 2-D convolutions and linear layers are sparsified"
    if node.target is aten.convolution.default and _argument(node, 6, "transposed", False):
        return "transposed convolution: not sparsified"
    if node.target in _CONVOLUTIONS:
        groups = _argument(node, _CONVOLUTIONS[node.target], "groups", 1)
        if groups != 1:
            kind = "depthwise" if shape[1] == 1 else "grouped"
            return f"{kind} convolution (groups={groups}): TensorRT has no sparse tensor-core kernels for it"
    if uses.get(weight.target, 0) > 1:
        return f"weight {weight.target} is read by several layers"
    outputs, inputs = shape[0], shape[1]
    if pattern is not None and inputs % pattern.group:
        return f"{inputs} input channels are not a multiple of {pattern.group} (the N:M groups must tile them)"
    if min(inputs, outputs) < min_channels:
        return (f"too few channels ({inputs} in, {outputs} out; min_channels={min_channels}): "
                "too narrow to run sparse")
    return None


def _spec(node: torch.fx.Node, weight: torch.fx.Node) -> InputSpec:
    source = node.args[0].name
    if node.target is aten.linear.default:
        return InputSpec(source)
    kernel = tuple(int(k) for k in weight.meta["val"].shape[2:])
    stride = as_pair(_argument(node, 3, "stride", 1))
    dilation = as_pair(_argument(node, 5, "dilation", 1))
    return InputSpec(source, kernel, stride, unfold_padding(_argument(node, 4, "padding", 0), kernel, dilation), dilation)


# --- layer-input Hessians ------------------------------------------------------------------------------

def layer_hessians(module: torch.fx.GraphModule, layers: list[SparseLayer], batches):
    """(layer, H in grouped column order) for every layer, H = X^T X summed over `batches` (float64),
    gathered on the module as it is now; layers that read the same input the same way share one pass."""
    by_spec: dict[InputSpec, list[SparseLayer]] = {}
    for layer in layers:
        by_spec.setdefault(layer.spec, []).append(layer)
    for spec, hessian, _ in iter_hessians(module, list(by_spec), batches):
        for layer in by_spec[spec]:
            yield layer, grouped_hessian(hessian, torch.Size(layer.shape))


# --- per-sample gradients and the empirical Fisher -----------------------------------------------------

def _tapped_with_layers(module: torch.fx.GraphModule, layers: list[SparseLayer]) -> torch.fx.GraphModule:
    """A module sharing `module`'s tensors that returns (outputs, layer inputs, layer outputs)."""
    nodes = {node.name: node for node in module.graph.nodes}
    graph = torch.fx.Graph()
    copies: dict[torch.fx.Node, torch.fx.Node] = {}
    output = graph.graph_copy(module.graph, copies)
    graph.output((output, tuple(copies[nodes[layer.spec.source]] for layer in layers),
                  tuple(copies[nodes[layer.node]] for layer in layers)))
    return torch.fx.GraphModule(module, graph)


def _sample_gradients(layer: SparseLayer, inputs: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """[samples, K * D] per-sample weight gradients, flattened in grouped column order."""
    samples = inputs.shape[0]
    if layer.spec.kernel is None:  # linear: contract the tokens of each sample
        x = inputs.reshape(samples, -1, inputs.shape[-1])
        gradient = torch.einsum("ntk,ntc->nkc", delta.reshape(samples, -1, delta.shape[-1]), x)
        return gradient.reshape(samples, -1)
    spec = layer.spec
    x = F.pad(inputs, spec.padding) if any(spec.padding) else inputs
    patches = F.unfold(x, spec.kernel, dilation=spec.dilation, stride=spec.stride)  # [n, C * taps, L]
    gradient = torch.bmm(delta.reshape(samples, delta.shape[1], -1), patches.transpose(1, 2))  # [n, K, C * taps]
    perm = unfold_to_grouped(torch.Size(layer.shape)).to(gradient.device)
    return gradient[:, :, perm].reshape(samples, -1)


def iter_sample_gradients(module: torch.fx.GraphModule, layers: list[SparseLayer], batches, loss_fn):
    """Per calibration batch, {layer node: per-sample gradients [n, K * D]} of loss_fn(outputs, labels),
    a loss summed over the samples (so that each sample's gradient is its own). `batches` are
    (inputs, labels) pairs; `outputs` is the list of the graph's output tensors."""
    tapped = _tapped_with_layers(module, layers)
    device = module_device(module)
    for inputs, labels in batches:
        inputs = (inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs)
        # Inputs that require grad make every layer output part of the autograd graph, even when
        # the parameters are frozen; no parameter gradient is ever formed.
        inputs = tuple(x.to(device).detach().requires_grad_(x.is_floating_point()) for x in inputs)
        with torch.enable_grad():
            output, sources, outputs = tapped(*inputs)
            loss = loss_fn([leaf for leaf in pytree.tree_leaves(output) if isinstance(leaf, torch.Tensor)],
                           labels.to(device))
            deltas = torch.autograd.grad(loss, outputs)
        yield {layer.node: _sample_gradients(layer, source.detach(), delta)
               for layer, source, delta in zip(layers, sources, deltas)}


def fisher_inverses(module: torch.fx.GraphModule, layers: list[SparseLayer], batches, loss_fn, *,
                    block_size: int, damping: float) -> dict[str, FisherInverse]:
    """Per layer, the blockwise inverse empirical Fisher of its weight (grouped order), damped by
    damping * mean diag(F) of that layer, from the per-sample gradients over `batches`."""
    batches = list(batches)
    samples, squares = 0, {layer.node: 0.0 for layer in layers}
    for gradients in iter_sample_gradients(module, layers, batches, loss_fn):
        samples += next(iter(gradients.values())).shape[0]
        for node, gradient in gradients.items():
            squares[node] += float(gradient.double().pow(2).sum())
    inverses = {}
    for layer in layers:
        numel = int(torch.Size(layer.shape).numel())
        mean_diagonal = squares[layer.node] / (samples * numel)
        scale = mean_diagonal if mean_diagonal > 0 else 1.0  # zero gradients: F = lam I, any lam
        inverses[layer.node] = FisherInverse(numel, block_size, samples, damping * scale,
                                              device=module_device(module))
    for gradients in iter_sample_gradients(module, layers, batches, loss_fn):
        for node, gradient in gradients.items():
            inverses[node].add(gradient)
    return inverses


def grouped_weight(module: torch.nn.Module, layer: SparseLayer) -> torch.Tensor:
    """The layer's weight as a float64 grouped matrix (nm_masks.grouped_matrix)."""
    return grouped_matrix(get_tensor(module, layer.weight).detach().double())
