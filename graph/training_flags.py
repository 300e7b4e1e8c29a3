"""Where an exported graph says train or eval: the training flag argument of its batch norms and dropouts
(torch.export records the mode in the operators' arguments, not in a module attribute)."""

from __future__ import annotations

import torch

# Graph operators whose behaviour depends on the training flag, and the index of that flag.
_TRAINING_FLAG_ARG = {
    torch.ops.aten.batch_norm.default: 5,
    torch.ops.aten.dropout.default: 2,
    torch.ops.aten.feature_dropout.default: 2,
    torch.ops.aten.alpha_dropout.default: 2,
    torch.ops.aten.feature_alpha_dropout.default: 2,
}


def training_flag_index(node: torch.fx.Node) -> int | None:
    """The index of `node`'s training flag, or None when its behaviour does not depend on the mode. A batch
    norm without running statistics (weight standardisation: BiT's StdConv2d, NFNet's ScaledStdConv2d
    normalise their conv weights with F.batch_norm(w, None, None, training=True)) always uses batch
    statistics: flipping it to eval would fail for want of running statistics."""
    index = _TRAINING_FLAG_ARG.get(node.target) if node.op == "call_function" else None
    if index is None or len(node.args) <= index:
        return None
    if node.target is torch.ops.aten.batch_norm.default and node.args[3] is None:
        return None
    return index


def graph_training_mode(graph: torch.fx.Graph) -> bool:
    """A graph is in training mode when any of its batch norms or dropouts is (no such node: eval)."""
    return any(bool(node.args[index]) for node in graph.nodes if (index := training_flag_index(node)) is not None)
