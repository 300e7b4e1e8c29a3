"""The Program's operators of one module's own code, cut out as a graph of their own (subgraph_module.py).

The operators a module's code made (torch.export's `nn_module_stack` says which) become a graph whose input is
the module's input; the calls of its children become call_module nodes. What its call passes besides the input
and what it returns are read off a watched call of the dense model (passed_tensors.py, subgraph_arguments.py).
Operators that depend on the training mode, baked into the graph, would not train: a module whose own code
calls one is refused (SubgraphError says why).
"""

from __future__ import annotations

import operator

import torch
from torch import fx, nn

from prunefx.graph import Program
from prunefx.graph.attributes import get_tensor
from prunefx.graph.training_flags import DROPOUTS, training_dropout
from prunefx.interop.passed_tensors import CallWatcher, PassedTensor, passed_tensors
from prunefx.interop.subgraph_arguments import bound_inputs, returned_order, takes
from prunefx.interop.subgraph_batch import NEW_FROM_SHAPE, batch_of, follow_input_batch
from prunefx.interop.subgraph_call import call_input, input_list
from prunefx.interop.subgraph_children import call_child, outside_inputs, prefix_of

# Operators whose behaviour depends on the training mode: baked into the graph, they would not train.
_MODAL = ("dropout", "batch_norm", "rrelu")
# Fused attention with its dropout probability baked in: exact in both modes where that is 0 and the module
# holds no dropout that training would apply (timm passes `attn_drop.p` only while training).
_ATTENTION = "scaled_dot_product"


class SubgraphError(Exception):
    """The module's own code cannot be cut out of the Program as a forward (turned into a WriteBackError)."""


def called_in(node: fx.Node, path: str) -> tuple[str, tuple[str, str] | None] | None:
    """For a node called inside module `path`: (that call's stack key, (key, path) of the child call one level
    deeper or None when `path`'s own code made it); None when the node is outside `path`."""
    entries = list((node.meta.get("nn_module_stack") or {}).items())
    for index, (key, (fqn, _)) in enumerate(entries):
        if fqn == path:
            deeper = entries[index + 1:]
            return key, ((deeper[0][0], deeper[0][1][0]) if deeper else None)
    return None


def _region(program: Program, path: str) -> dict[fx.Node, tuple[str, str] | None]:
    region, calls = {}, set()
    for node in program.graph.nodes:
        found = called_in(node, path) if node.op == "call_function" else None
        if found is not None:
            calls.add(found[0])
            region[node] = found[1]
    if not region:
        raise SubgraphError("the program calls no operator in it (pruning drops code whose result the model does "
                            "not use, such as an auxiliary head's in eval mode)")
    if len(calls) > 1:
        raise SubgraphError(f"the model calls it {len(calls)} times")
    return region


def module_graph(program: Program, path: str, owner: nn.Module, windows: bool,
                 watch: CallWatcher | None) -> tuple[fx.Graph, list[PassedTensor]]:
    """The Program's operators of module `path`'s own code, its children's calls as call_module; with `windows`,
    sizes that are multiples of the batch follow the input's (subgraph_batch.py). What its call passes
    besides its input (other modules' tensors, further activations) and what it passes its children are read
    off a call of the dense model that `watch` watches (passed_tensors.py)."""
    region = _region(program, path)
    prefix = prefix_of(path)
    dropout_free = _dropout_free(owner, {child[1][len(prefix):] for child in region.values() if child})
    inside = set(region)
    inputs = outside_inputs(list(region), inside)
    outputs = [node for node in region if any(user not in inside for user in node.users)]
    if not inputs or not outputs:
        raise SubgraphError(f"its operators take {len(inputs)} tensors from outside and give {len(outputs)}")
    groups: dict[tuple[str, str], list[fx.Node]] = {}
    for node, child in region.items():
        if child is not None:
            groups.setdefault(child, []).append(node)
    foreign = {value.target: value for node in region if region[node] is None for value in node.all_input_nodes
               if value.op == "get_attr" and not str(value.target).startswith(prefix)}
    watched = watch.call(path) if watch else None
    several = foreign or len(inputs) > 1 or len(outputs) > 1 or takes(owner) > 1
    call = watched if several or (watched is not None and input_list(call_input(watched, owner))) else None
    example = program.example_inputs[0] if program.example_inputs else None
    images = example.shape[0] if isinstance(example, torch.Tensor) and example.dim() else None
    values = watch.values if watch else _no_values
    try:
        firsts, activations = bound_inputs(inputs, call, images, values)
        outputs = returned_order(outputs, call, values) if len(outputs) > 1 else outputs
    except ValueError as reason:
        raise SubgraphError(str(reason)) from None
    graph = fx.Graph()
    x, env = firsts[0][0], _input_entries(graph, firsts)
    bound = []
    for target, (name, position) in (passed_tensors(call, [str(t) for t in foreign]) if foreign and call else {}).items():
        bound.append(PassedTensor(name, position, tuple(get_tensor(program.module, target).shape)))
        env[foreign[target]] = graph.placeholder(f"passed_{name}")
    for node, each in activations:
        bound.append(each)
        if each.read:
            env[node] = graph.placeholder(f"passed_{each.name}")
    # values computed from the input, or made to follow its batch (else the module's constants)
    from_input = {*(node for node, _ in firsts), *(node for node, each in activations if each.batched)}
    batches = (batch_of(x), images)
    for node in region:
        if node.target not in NEW_FROM_SHAPE and any(value in from_input for value in node.all_input_nodes):
            from_input.add(node)
        child = region[node]
        if child is None:
            _copy_own(graph, node, env, prefix, dropout_free)
            if follow_input_batch(graph, env[node], node, env[x], batches, from_input, windows):
                from_input.add(node)
        elif node is groups[child][-1]:  # the child's whole call, at its last operator
            try:
                call_child(graph, groups[child], child[1], path, env, owner, watch)
            except ValueError as reason:
                raise SubgraphError(str(reason)) from None
    graph.output(env[outputs[0]] if len(outputs) == 1 else tuple(env[node] for node in outputs))
    return graph, bound


def _input_entries(graph: fx.Graph, firsts: list[tuple[fx.Node, int | None]]) -> dict[fx.Node, fx.Node]:
    """The module's input as the placeholder `x`: a tensor, or each entry of a list of tensors read from it."""
    x = graph.placeholder("x")
    return {node: x if index is None else graph.call_function(operator.getitem, (x, index)) for node, index in firsts}


def _dropout_free(owner: nn.Module, called: set[str]) -> bool:
    """Whether `owner` holds no dropout that its own code could apply: those inside the children it calls as
    modules are theirs, applied by their own forward in either mode (a position MLP's dropout); a dropout it
    calls itself counts (its rate may also be the fused attention's)."""
    return all(layer.p == 0 for name, layer in owner.named_modules() if isinstance(layer, nn.modules.dropout._DropoutNd)
               and not any(name.startswith(f"{child}.") for child in called))


def _dropout_p(node: fx.Node) -> float:
    """The dropout probability of a fused attention call in training: an eval graph holds 0 and keeps that one
    aside (graph/training_flags.py)."""
    held = float(node.kwargs.get("dropout_p", node.args[4] if len(node.args) > 4 else 0.0))
    return max(held, training_dropout(node) or 0.0)


def _no_dropout(node: fx.Node) -> bool:
    """A dropout of probability 0 (torchvision's Swin passes its attention dropout of 0 to F.dropout): the
    identity in either mode."""
    return node.target in DROPOUTS and len(node.args) > 1 and type(node.args[1]) in (int, float) and node.args[1] == 0


def _copy_own(graph: fx.Graph, node: fx.Node, env: dict, prefix: str, dropout_free: bool) -> None:
    attention = _ATTENTION in str(node.target)
    modal = any(word in str(node.target) for word in _MODAL) and not _no_dropout(node)
    if attention and not (dropout_free and _dropout_p(node) == 0) or modal:
        raise SubgraphError(f"its own code calls {node.target}, which would not follow the training mode")
    for value in node.all_input_nodes:
        if value.op == "get_attr" and value not in env:
            if not str(value.target).startswith(prefix):
                raise SubgraphError(f"its own code reads '{value.target}', a tensor of another module")
            env[value] = graph.get_attr(str(value.target)[len(prefix):])
    try:
        env[node] = graph.node_copy(node, lambda value: env[value])
    except KeyError as error:
        raise SubgraphError("its own operators read a value inside a child's call") from error


def graph_form(graph: fx.Graph) -> list[tuple]:
    """A graph's operators and arguments, values by their place: equal for two calls that compute alike."""
    place = {node: index for index, node in enumerate(graph.nodes)}
    return [(node.op, str(node.target), repr(fx.node.map_arg((node.args, node.kwargs), lambda value: place[value])))
            for node in graph.nodes]


def _no_values(names: list[str]) -> dict[str, torch.Tensor]:
    return {}
