"""fold_batchnorm: fold an eval-mode batch norm into the convolution or linear layer before it.

Rewrites `bn(conv(x, W, b))` into `conv(x, W', b')` (likewise for linear) with
    s  = gamma / sqrt(running_var + eps)
    W' = W * s            (per output channel)
    b' = (b - running_mean) * s + beta
which is exact in eval mode.

Preconditions for a fold (otherwise the pair is left alone and counted in the stats):
- the batch norm is in eval mode and tracks running statistics;
- the layer's only user is the batch norm, and its weight is used by no other node;
- the layer is a convolution (transposed too: its weight holds the output channels in dim 1, per group), or a
  linear layer whose output is 2-D [N, C], or flattened to [N * L, C] first (LeViT's linear + BatchNorm1d):
  BatchNorm1d on [N, C, L] normalises a different axis than linear's output features.
Non-goals: folding a batch norm *before* a layer (the merge_blocks pass does that), training mode.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from prunefx.graph import Program
from prunefx.graph.attributes import (
    attribute_name,
    free_name,
    get_tensor,
    set_tensor,
    tensor_name,
    users_of_tensor,
)
from prunefx.graph.counting import count
from prunefx.graph.operators import TRANSPOSED_CONVOLUTIONS, transposed_groups
from prunefx.passes.core.contract import graph_pass
from prunefx.passes.core.pass_config import PassConfig
from prunefx.passes.core.registry import shipped_pass
from prunefx.passes.core.result import Result

aten = torch.ops.aten

# Layer operator -> index of its bias argument; weight is argument 1 for all of them.
_FOLDABLE_LAYERS = {
    aten.conv1d.default: 2, aten.conv2d.default: 2, aten.conv3d.default: 2,
    aten.conv1d.padding: 2, aten.conv2d.padding: 2, aten.conv3d.padding: 2,
    aten.convolution.default: 2, aten.linear.default: 2,
    **dict.fromkeys(TRANSPOSED_CONVOLUTIONS, 2),
}
_SHAPE_OF_SECOND = {aten.reshape_as.default, aten.view_as.default, aten.expand_as.default}  # (values, shape)


def _batch_norm_parts(bn: torch.fx.Node):
    """(gamma, beta, mean, var, eps) targets/values of an eval-mode batch norm, or None."""
    _, weight, bias, mean, var, training, _, eps = bn.args[:8]
    if training or attribute_name(mean) is None or attribute_name(var) is None:
        return None
    if (weight is not None and attribute_name(weight) is None) or (bias is not None and attribute_name(bias) is None):
        return None
    return attribute_name(weight), attribute_name(bias), attribute_name(mean), attribute_name(var), eps


def _flattened_linear(node) -> torch.fx.Node | None:
    """The linear layer whose output `node` flattens to [N * L, C] (its features last), read by nothing else."""
    if not (isinstance(node, torch.fx.Node) and node.target is aten.flatten.using_ints and len(node.users) == 1):
        return None
    linear, start, end = (list(node.args) + [0, -1])[:3]
    if not (isinstance(linear, torch.fx.Node) and linear.target is aten.linear.default):
        return None
    rank = linear.meta["val"].dim()
    return linear if start == 0 and end % rank == rank - 2 else None


def _reads_shape_only(user: torch.fx.Node, node: torch.fx.Node) -> bool:
    """`user` reads `node`'s shape, not its values (LeViT's `bn(x.flatten(0, 1)).reshape_as(x)`)."""
    if user.target is aten.sym_size.int:
        return True
    return user.target in _SHAPE_OF_SECOND and node not in (user.args[:1] + tuple(user.kwargs.values()))


def _foldable_layer(bn: torch.fx.Node, module: torch.fx.GraphModule) -> torch.fx.Node | None:
    normalised = bn.args[0]  # the layer's output, or a linear's flattened
    if not isinstance(normalised, torch.fx.Node):
        return None
    layer = _flattened_linear(normalised) or normalised
    if not isinstance(layer, torch.fx.Node) or layer.op != "call_function" or layer.target not in _FOLDABLE_LAYERS:
        return None
    if sum(not _reads_shape_only(user, layer) for user in layer.users) != 1:
        return None
    weight = attribute_name(layer.args[1])
    if weight is None or len(users_of_tensor(module, weight)) != 1:
        return None
    # the batch norm scales dim 1, the layer's output channels only where the output is batched: a conv's output
    # has its weight's rank then, a linear's two dims (an unbatched conv1d gives [C, L], and dim 1 is the length)
    if normalised.meta["val"].dim() != get_tensor(module, tensor_name(layer.args[1])).dim():
        return None
    bias = layer.args[2] if len(layer.args) > 2 else None
    if bias is not None and (attribute_name(bias) is None or len(users_of_tensor(module, attribute_name(bias))) != 1):
        return None
    return layer


def _fold_pair(module: torch.fx.GraphModule, layer: torch.fx.Node, bn: torch.fx.Node, parts) -> None:
    gamma_t, beta_t, mean_t, var_t, eps = parts
    weight_t = tensor_name(layer.args[1])
    weight = get_tensor(module, weight_t)
    dtype = weight.dtype
    groups = transposed_groups(layer)
    channels = weight.shape[0] if groups is None else weight.shape[1] * groups
    # the defaults sit beside the weight: a cuda model's folding must not mix in CPU tensors
    zeros = torch.zeros(channels, dtype=torch.float64, device=weight.device)
    as64 = lambda target, default: (get_tensor(module, target).double() if target else default)  # noqa: E731
    gamma = as64(gamma_t, zeros + 1)
    beta = as64(beta_t, zeros)
    mean, var = as64(mean_t, None), as64(var_t, None)
    bias_node = layer.args[2] if len(layer.args) > 2 else None
    bias = get_tensor(module, tensor_name(bias_node)).double() if bias_node is not None else zeros

    scale = gamma / torch.sqrt(var + eps)
    new_weight = _scaled_outputs(weight.double(), scale, groups)
    new_bias = (bias - mean) * scale + beta
    set_tensor(module, weight_t, new_weight.to(dtype))
    _set_bias(module, layer, weight_t, new_bias.to(dtype))
    normalised = bn.args[0]
    assert isinstance(normalised, torch.fx.Node)  # _foldable_layer's check
    bn.replace_all_uses_with(normalised)
    module.graph.erase_node(bn)


def _scaled_outputs(weight: torch.Tensor, scale: torch.Tensor, groups: int | None) -> torch.Tensor:
    """`weight` with each output channel's kernel times its `scale`: dim 0 of a layer's weight, and for a
    transposed convolution ([in, out / groups, ...]) dim 1 within each group of inputs."""
    if groups is None:
        return weight * scale.reshape(-1, *([1] * (weight.dim() - 1)))
    grouped = weight.reshape(groups, weight.shape[0] // groups, *weight.shape[1:])
    per_group = scale.reshape(groups, 1, weight.shape[1], *([1] * (weight.dim() - 2)))
    return (grouped * per_group).reshape(weight.shape)


def _set_bias(module: torch.fx.GraphModule, layer: torch.fx.Node, weight_target: str, value: torch.Tensor) -> None:
    bias_node = layer.args[2] if len(layer.args) > 2 else None
    if bias_node is not None:
        set_tensor(module, tensor_name(bias_node), value)
        return
    stem = weight_target[: -len("weight")] if weight_target.endswith("weight") else weight_target + "_"
    target = free_name(module, stem + "bias")
    set_tensor(module, target, value, parameter=True)
    with module.graph.inserting_before(layer):
        bias_node = module.graph.get_attr(target)
    args = list(layer.args) + [None] * max(0, 3 - len(layer.args))
    args[2] = bias_node
    layer.args = tuple(args)


@dataclass
class FoldBatchnormConfig(PassConfig):
    """No options: every foldable pair is folded."""

    owner: ClassVar[str] = "fold_batchnorm"


@dataclass(frozen=True)
class Folded:
    """What fold_batchnorm hands to a pass that runs it (quantize_int8): how many batch norms it folded."""

    folded: int


@shipped_pass
@graph_pass(config=FoldBatchnormConfig, in_place=True, exact=True)
def fold_batchnorm(program: Program, /, *, config: dict | None = None) -> Result:
    FoldBatchnormConfig.parse(config)
    module = program.module
    batch_norms = [n for n in module.graph.nodes if n.op == "call_function" and n.target is aten.batch_norm.default]
    macs_before = count(program).macs
    folded, skipped_training, skipped_pattern = 0, 0, 0
    for bn in batch_norms:
        parts = _batch_norm_parts(bn)
        if parts is None:
            skipped_training += bool(bn.args[5])
            skipped_pattern += not bn.args[5]
            continue
        layer = _foldable_layer(bn, module)
        if layer is None:
            skipped_pattern += 1
            continue
        _fold_pair(module, layer, bn, parts)
        folded += 1
    if folded:
        program.recompile()
    stats = {"folded": folded, "batch_norms": len(batch_norms), "left_in_training_mode": skipped_training,
             "left_no_foldable_layer": skipped_pattern, "macs_before": macs_before, "macs_after": count(program).macs}
    return Result(program, modified=folded > 0, stats=stats, facts=Folded(folded))
