"""Where an exported graph says train or eval: the training flag argument of its batch norms and dropouts
(torch.export records the mode in the operators' arguments, not in a module attribute), set all alike
(`set_training`) or recorded and put back one by one (`Modes`, `modes_of`, `restore_modes`).

A batch norm captured in training mode also counts its batches: `num_batches_tracked.add_(1)`, a node of its
own. Its increment is its flag: 1 in training, 0 in eval, as an eval-mode batch norm counts nothing.

Fused attention captured in training mode holds its dropout probability as a number (`dropout_p`), which is its
flag: 0 in eval, and in training the probability it was captured with, kept in the node's custom metadata
(which re-export, cloning and `.pt2` files keep) while the graph is in eval."""

from __future__ import annotations

from dataclasses import dataclass

import torch

# The dropouts: (input, p, train); nn.Dropout(inplace=True) captures as the in-place form (MobileNetV3's head).
DROPOUTS = frozenset({getattr(torch.ops.aten, name).default
                      for base in ("dropout", "feature_dropout", "alpha_dropout", "feature_alpha_dropout")
                      for name in (base, base + "_")})
# Graph operators whose behaviour depends on the training flag, and the index of that flag.
_TRAINING_FLAG_ARG = {torch.ops.aten.batch_norm.default: 5, **dict.fromkeys(DROPOUTS, 2)}


# Fused attention: the index of its dropout probability, which is 0 in eval (module docstring).
_ATTENTION_DROPOUT_ARG = {torch.ops.aten.scaled_dot_product_attention.default: 4}
_TRAINING_DROPOUT = "prunefx_training_dropout_p"  # the key in node.meta["custom"]


_COUNTER_ADDS = {torch.ops.aten.add_.Tensor, torch.ops.aten.add_.Scalar}
_COUNTER = "num_batches_tracked"


def _batch_counter(node: torch.fx.Node) -> bool:
    """`num_batches_tracked += 1` (or += 0: its eval form)."""
    counted = node.args[0] if node.target in _COUNTER_ADDS and len(node.args) == 2 else None
    return (isinstance(counted, torch.fx.Node) and counted.op == "get_attr"
            and str(counted.target).rpartition(".")[2] == _COUNTER
            and type(node.args[1]) is int and node.args[1] in (0, 1) and not node.kwargs)


def training_flag_index(node: torch.fx.Node) -> int | None:
    """The index of `node`'s training flag, or None when its behaviour does not depend on the mode. A batch
    norm without running statistics (weight standardisation: BiT's StdConv2d, NFNet's ScaledStdConv2d
    normalise their conv weights with F.batch_norm(w, None, None, training=True)) always uses batch
    statistics: flipping it to eval would fail for want of running statistics."""
    if node.op == "call_function" and _batch_counter(node):
        return 1
    if node.op == "call_function" and training_dropout(node) is not None:
        return _ATTENTION_DROPOUT_ARG[node.target]
    index = _TRAINING_FLAG_ARG.get(node.target) if node.op == "call_function" else None
    if index is None or len(node.args) <= index:
        return None
    if node.target is torch.ops.aten.batch_norm.default and node.args[3] is None:
        return None
    return index


def training_dropout(node: torch.fx.Node) -> float | None:
    """A fused attention node's dropout probability in training (the one it holds, or the one kept while the
    graph is in eval); None for other nodes and for attention without dropout."""
    index = _ATTENTION_DROPOUT_ARG.get(node.target)
    if index is None:
        return None
    kept = (node.meta.get("custom") or {}).get(_TRAINING_DROPOUT)
    held = node.args[index] if len(node.args) > index else None
    for probability in (held, kept):  # a file's metadata is checked like any number in it
        if type(probability) is float and 0 < probability < 1:
            return probability
    return None


def graph_training_mode(graph: torch.fx.Graph) -> bool:
    """A graph is in training mode when any of its batch norms or dropouts is (no such node: eval); a batch
    counter follows its batch norm and does not decide."""
    return bool(training_nodes(graph))


def training_nodes(graph: torch.fx.Graph) -> list[torch.fx.Node]:
    """The batch norms and dropouts whose flag says training (a batch counter follows its batch norm)."""
    return [node for node in graph.nodes
            if (index := training_flag_index(node)) is not None and not _batch_counter(node) and _flag(node, index)]


def settle_batch_counters(module: torch.fx.GraphModule) -> None:
    """An eval-mode graph's counters at += 0: a file saved before the counters followed the mode holds += 1."""
    if not graph_training_mode(module.graph):
        _set_flags(module, lambda node: False)


@dataclass(frozen=True)
class Modes:
    """A graph module's modes at one moment: its overall mode, each node's training flag and each submodule's
    `training` attribute, by name (no reference to the graph: kept across a rewrite, it holds no replaced
    weights alive)."""

    training: bool
    flags: dict[str, bool | int | float]  # a flag, a counter's increment, attention's dropout probability
    attributes: dict[str, bool]


def set_training(module: torch.fx.GraphModule, mode: bool) -> None:
    """Every batch norm's and dropout's flag in `module`'s graph, and every submodule's `training`, set to `mode`."""
    _set_flags(module, lambda node: mode)
    set_module_attributes(module, mode)


def set_module_attributes(module: torch.nn.Module, mode: bool) -> None:
    """Every submodule's `training` attribute (GraphModules from torch.export refuse `.train()`)."""
    for submodule in module.modules():
        submodule.training = mode


def module_modes(module: torch.nn.Module) -> dict[str, bool]:
    """Each submodule's `training` attribute, by name."""
    return {name: submodule.training for name, submodule in module.named_modules()}


def set_module_modes(module: torch.nn.Module, modes: dict[str, bool], default: bool) -> None:
    """Each submodule's `training` as `modes` names it (a frozen batch norm in a training model stays frozen);
    those it does not name take `default`."""
    for name, submodule in module.named_modules():
        submodule.training = modes.get(name, default)


def modes_of(module: torch.fx.GraphModule) -> Modes:
    """Every training flag of the graph and every submodule's `training`, to put back with `restore_modes`."""
    return Modes(graph_training_mode(module.graph),
                 {node.name: _flag(node, index) for node in module.graph.nodes
                  if (index := training_flag_index(node)) is not None},
                 module_modes(module))


def restore_modes(module: torch.fx.GraphModule, modes: Modes) -> None:
    """Each flag and attribute as `modes` recorded it (a frozen batch norm in a training graph stays frozen,
    where `set_training` sets them all alike); nodes and submodules of other names take its overall mode."""
    _set_flags(module, lambda node: modes.flags.get(node.name, modes.training))
    set_module_modes(module, modes.attributes, modes.training)


def _set_flags(module: torch.fx.GraphModule, mode_of) -> None:
    """Each flag set to `mode_of(node)`; the module recompiled once if any changed."""
    changed = False
    for node in module.graph.nodes:
        index = training_flag_index(node)
        if index is None:
            continue
        mode, current = _flag_value(node, mode_of(node)), _flag(node, index)
        if current != mode or type(current) is not type(mode) or len(node.args) <= index:
            node.args = (*_arguments_to(node, index), mode, *node.args[index + 1:])
            changed = True
    if changed:
        module.recompile()


def _flag(node: torch.fx.Node, index: int):
    """The flag argument, or its default where the graph leaves it out (re-export drops a dropout_p of 0)."""
    return node.args[index] if len(node.args) > index else _default(node, index)


def _arguments_to(node: torch.fx.Node, index: int) -> tuple:
    """`node`'s positional arguments before `index`, those it leaves out given their defaults."""
    return (*node.args[:index], *(_default(node, i) for i in range(len(node.args), index)))


def _default(node: torch.fx.Node, index: int):
    return node.target._schema.arguments[index].default_value  # type: ignore[union-attr]


def _flag_value(node: torch.fx.Node, training: bool) -> bool | int | float:
    """What `node`'s flag argument holds in that mode: a counter's increment, attention's dropout probability
    (kept in the node's metadata, module docstring), another's flag."""
    if _batch_counter(node):
        return int(training)
    probability = training_dropout(node)
    if probability is None:
        return bool(training)
    node.meta.setdefault("custom", {})[_TRAINING_DROPOUT] = probability
    return probability if training else 0.0
