"""Which values of a captured graph an operator later overwrites in place.

Captured graphs keep the in-place operators of the model's code: ResNet's `out += identity` is
`aten.add_(out, identity)` and its `relu(inplace=True)` is `aten.relu_`, each writing into the memory of its
first argument. A reader that keeps a node's value and looks at it after the graph ran on (calibration taps,
staged runs, features for distillation) would see what a later in-place operator wrote there, not what the node
computed: `as_computed` gives a copied graph's reader a copy taken when the node ran. Memory is shared as the operators' schemas say:
an argument annotated as aliased by the result (views, in-place results) shares the result's memory, and one
annotated as written is overwritten.
"""

from __future__ import annotations

import operator

import torch

_CLONE = torch.ops.aten.clone.default


def overwritten_later(graph: torch.fx.Graph) -> set[torch.fx.Node]:
    """The nodes whose memory an operator after them writes into."""
    order = {node: position for position, node in enumerate(graph.nodes)}
    memory: dict[torch.fx.Node, torch.fx.Node] = {}

    def owner(node: torch.fx.Node) -> torch.fx.Node:
        while memory.get(node, node) is not node:
            node = memory[node]
        return node

    last_write: dict[torch.fx.Node, int] = {}
    for node in graph.nodes:
        shared, written = _aliased_arguments(node)
        for argument in shared:
            memory[owner(node)] = owner(argument)
        for argument in written:
            last_write[owner(argument)] = order[node]
    return {node for node in graph.nodes if order[node] < last_write.get(owner(node), -1)}


def writers_of(node: torch.fx.Node) -> list[torch.fx.Node]:
    """The readers of `node` whose operator overwrites its memory (`relu_(node)`, `add_(node, y)`)."""
    return [user for user in node.users if node in _aliased_arguments(user)[1]]


def out_of_place(op) -> torch._ops.OpOverload | None:
    """The out-of-place form of an in-place ATen operator (`relu_` -> `relu`, `add_.Tensor` -> `add.Tensor`),
    which takes the same arguments; None where torch has none."""
    if not isinstance(op, torch._ops.OpOverload) or not op.__name__.split(".")[0].endswith("_"):
        return None
    name = op._schema.name.split("::")[-1]
    packet = getattr(torch.ops.aten, name[:-1], None) if op.namespace == "aten" else None
    return getattr(packet, op._overloadname, None) if packet is not None else None


def _aliased_arguments(node: torch.fx.Node) -> tuple[list[torch.fx.Node], list[torch.fx.Node]]:
    """(the arguments whose memory `node`'s result shares, the arguments `node` writes into)."""
    if node.op != "call_function":
        return [], []
    if node.target is operator.getitem:  # an item of a tuple that may alias its source (split, unbind)
        return [node.args[0]], []
    schema = getattr(node.target, "_schema", None)
    if schema is None:
        return [], []
    result_aliases = any(result.alias_info is not None for result in schema.returns)
    shared, written = [], []
    for position, argument in enumerate(schema.arguments):
        value = node.args[position] if position < len(node.args) else node.kwargs.get(argument.name)
        if argument.alias_info is None or not isinstance(value, torch.fx.Node):
            continue
        if result_aliases:
            shared.append(value)
        if argument.alias_info.is_write:
            written.append(value)
    return shared, written


def as_computed(source: torch.fx.Graph, graph: torch.fx.Graph, copies: dict[torch.fx.Node, torch.fx.Node],
                nodes: list[torch.fx.Node]) -> list[torch.fx.Node]:
    """The copies in `graph` (`copies`: graph_copy's map from `source`) of `source`'s `nodes`, each one a later
    operator writes into replaced by a clone inserted right after it."""
    overwritten = overwritten_later(source)
    clones = {}
    for node in dict.fromkeys(node for node in nodes if node in overwritten):
        with graph.inserting_after(copies[node]):
            clones[node] = graph.call_function(_CLONE, (copies[node],))
    return [clones.get(node, copies[node]) for node in nodes]
