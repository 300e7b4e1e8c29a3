"""Replace a layer norm over channels by a batch norm (UPDP's pruned form: a batch norm is affine in
eval mode, so the block around it can be merged; a layer norm never is).

`layer_norm_to_batch_norm(program, node)` rewrites one `aten.layer_norm` node that normalises the last
dim C of its input. The batch norm keeps the layer norm's affine parameters (gamma, beta) and epsilon,
and gets fresh running statistics (mean 0, variance 1, registered as buffers next to gamma) that are
meant to be calibrated afterwards (passes/recalibrate_batchnorm.py). Two patterns:
- timm's LayerNorm2d, `permute(x, [0, 2, 3, 1]) -> layer_norm -> permute([0, 3, 1, 2])`: the batch
  norm goes on the NCHW tensor `x` directly and both permutes go away (it normalises dim 1);
- any other `[..., C]` tensor: `reshape(-1, C) -> batch_norm -> reshape back` (a rank-2 input needs no
  reshape). The shapes are static in a Program, so the reshape back uses the literal shape.
The batch norm's training flag is the Program's mode (Program.train()/eval() flip it later).
This changes what the network computes (batch statistics instead of per-token ones): it is the start of
a fine-tuning, not an exact rewrite.
"""

from __future__ import annotations

import torch

from prunefx.graph.attributes import free_name, get_tensor, set_tensor
from prunefx.graph.errors import PrunefxError
from prunefx.graph.placement import module_device

aten = torch.ops.aten

_TO_CHANNELS_LAST = [0, 2, 3, 1]
_TO_CHANNELS_FIRST = [0, 3, 1, 2]


class NormReplacementError(PrunefxError):
    """The node is not a layer norm this rewrite can replace."""


def layer_norm_to_batch_norm(program, layer_norm: torch.fx.Node, *, recompile: bool = True) -> torch.fx.Node:
    """Replace `layer_norm` (an aten.layer_norm node of `program`) by a batch norm; return the batch norm node.

    With `recompile=False` the generated code and shape metadata are left stale, so that a caller
    replacing many norms recompiles once (call `program.recompile()` before running the Program).
    """
    channels, gamma, beta, eps = _layer_norm_parts(layer_norm)
    module, graph = program.module, program.graph
    mean_target, var_target = _new_statistics(module, gamma, layer_norm.name, channels)
    permutes = _layer_norm_2d_permutes(layer_norm)
    if permutes is not None:
        before, after = permutes
        with graph.inserting_before(after):
            batch_norm = _batch_norm_node(graph, before.args[0], gamma, beta, mean_target, var_target, eps,
                                          _mode(program))
        after.replace_all_uses_with(batch_norm)
        for node in (after, layer_norm, before):
            graph.erase_node(node)
    else:
        batch_norm = _last_dim_batch_norm(program, layer_norm, channels, gamma, beta, mean_target, var_target, eps)
    if recompile:
        program.recompile()
    else:
        module.recompile()
    return batch_norm


def why_not_replaceable(layer_norm: torch.fx.Node) -> str | None:
    """Why `layer_norm` cannot become a batch norm (it normalises more than the channels, its scale is
    computed), or None when it can: a block holding one is not affine once linearised."""
    try:
        _layer_norm_parts(layer_norm)
    except NormReplacementError as error:
        return str(error)
    return None


def _layer_norm_parts(node: torch.fx.Node):
    """(C, gamma node or None, beta node or None, eps) of a layer norm over the last dim only."""
    if not isinstance(node, torch.fx.Node) or node.op != "call_function" or node.target is not aten.layer_norm.default:
        raise NormReplacementError(f"{getattr(node, 'name', node)} is not an aten.layer_norm node")
    args = list(node.args) + [None] * (5 - len(node.args))
    data, shape, gamma, beta = args[:4]
    eps = args[4] if args[4] is not None else node.kwargs.get("eps", 1e-5)
    value = data.meta.get("val") if isinstance(data, torch.fx.Node) else None
    if value is None:
        raise NormReplacementError(f"{node.name}: no shape metadata on its input (run program.refresh_meta())")
    if len(shape) != 1 or int(shape[0]) != int(value.shape[-1]):
        raise NormReplacementError(f"{node.name} normalises over {list(shape)} of a {list(value.shape)} tensor; "
                                   f"only a layer norm over the last dim (channels) becomes a batch norm")
    for name, parameter in (("weight", gamma), ("bias", beta)):
        if parameter is not None and (not isinstance(parameter, torch.fx.Node) or parameter.op != "get_attr"):
            raise NormReplacementError(f"{node.name}: its {name} is computed in the graph, not a parameter")
    return int(shape[0]), gamma, beta, float(eps)


def _new_statistics(module: torch.nn.Module, gamma, fallback: str, channels: int) -> tuple[str, str]:
    """Register running_mean (zeros) and running_var (ones) buffers next to the layer norm's weight."""
    if gamma is not None and gamma.target.endswith("weight"):
        stem = gamma.target[: -len("weight")]
    else:
        stem = fallback + "_"
    dtype = get_tensor(module, gamma.target).dtype if gamma is not None else torch.float32
    targets = []
    device = module_device(module)  # beside the model's tensors: a batch norm reads both on one device
    for name, value in (("running_mean", torch.zeros(channels, dtype=dtype, device=device)),
                        ("running_var", torch.ones(channels, dtype=dtype, device=device))):
        target = free_name(module, stem + name)
        set_tensor(module, target, value, parameter=False)
        targets.append(target)
    return targets[0], targets[1]


def _layer_norm_2d_permutes(node: torch.fx.Node):
    """(permute before, permute after) when `node` sits between NCHW -> NHWC -> NCHW permutes used by
    nothing else; None otherwise."""
    before = node.args[0]
    users = list(node.users)
    if (before.op != "call_function" or before.target is not aten.permute.default
            or list(before.args[1]) != _TO_CHANNELS_LAST or len(before.users) != 1 or len(users) != 1):
        return None
    after = users[0]
    if after.target is not aten.permute.default or list(after.args[1]) != _TO_CHANNELS_FIRST:
        return None
    return before, after


def _batch_norm_node(graph: torch.fx.Graph, data, gamma, beta, mean_target: str, var_target: str, eps: float,
                     training: bool) -> torch.fx.Node:
    mean, var = graph.get_attr(mean_target), graph.get_attr(var_target)
    # Same argument layout as the batch norms torch.export records (momentum 0.1, cudnn_enabled False).
    return graph.call_function(aten.batch_norm.default, (data, gamma, beta, mean, var, training, 0.1, eps, False))


def _last_dim_batch_norm(program, layer_norm, channels, gamma, beta, mean_target, var_target, eps) -> torch.fx.Node:
    graph = program.graph
    data = layer_norm.args[0]
    shape = [int(s) for s in data.meta["val"].shape]
    with graph.inserting_before(layer_norm):
        flat = data if len(shape) == 2 else graph.call_function(aten.reshape.default, (data, [-1, channels]))
        batch_norm = _batch_norm_node(graph, flat, gamma, beta, mean_target, var_target, eps, _mode(program))
        result = batch_norm if len(shape) == 2 else graph.call_function(aten.reshape.default, (batch_norm, shape))
    layer_norm.replace_all_uses_with(result)
    graph.erase_node(layer_norm)
    return batch_norm


def _mode(program) -> bool:
    # The module attribute is what the last train()/eval() set; the graph alone cannot say when it has
    # no batch norm or dropout yet (Program.training then reads eval).
    return bool(program.module.training) or program.training
