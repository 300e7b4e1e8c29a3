"""A subgraph's calls of its module's children (subgraph_module.py): what each call reads, and the call itself.

A child is called as a module, on the tensors its operators read from outside it: an activation, or a tensor
its parent holds and hands it (the coordinates of a position MLP). Where it reads several or may take more
arguments (a size, a rate), it is called as the watched call of the dense model called it (passed_tensors.py,
subgraph_arguments.py). ValueError says why no call is made.
"""

from __future__ import annotations

import torch
from torch import fx, nn

from prunefx.graph.attributes import get_tensor
from prunefx.interop.passed_tensors import CallWatcher
from prunefx.interop.proof_by_module import leaves
from prunefx.interop.subgraph_arguments import call_arguments, takes


def prefix_of(path: str) -> str:
    """What the names of module `path`'s tensors and children start with: 'a.b.' for 'a.b', '' for the model."""
    return f"{path}." if path else ""


def outside_inputs(members: list[fx.Node], inside: set[fx.Node]) -> list[fx.Node]:
    """The activations `members` read from outside `inside`, in order (tensors reached by get_attr excluded)."""
    found: list[fx.Node] = []
    for member in members:
        for value in member.all_input_nodes:
            if value not in inside and value.op != "get_attr" and value not in found:
                found.append(value)
    return found


def _call_inputs(members: list[fx.Node], child: str, prefix: str, owner: nn.Module) -> list[fx.Node]:
    """What a child's call reads from outside it: activations, and tensors of the module `owner` (at `prefix`)
    that are not the child's own (a buffer the module hands its child: the coordinates of a position MLP). A
    tensor the child holds under another name (a module shared by two blocks) is its own."""
    held = {id(tensor) for tensor in _tensors(owner.get_submodule(child[len(prefix):]))}
    found = [value for member in members for value in member.all_input_nodes if value.op == "get_attr"
             and str(value.target).startswith(prefix) and not str(value.target).startswith(f"{child}.")
             and id(_tensor_at(owner, str(value.target)[len(prefix):])) not in held]
    return [*outside_inputs(members, set(members)), *dict.fromkeys(found)]


def _tensors(module: nn.Module) -> list[torch.Tensor]:
    return [*module.parameters(), *module.buffers()]


def _tensor_at(module: nn.Module, target: str):
    try:
        return get_tensor(module, target)
    except AttributeError:
        return None


def call_child(graph: fx.Graph, members: list[fx.Node], child: str, path: str, env: dict, owner: nn.Module,
                watch: CallWatcher | None) -> None:
    """The child's call, as call_module: on the one tensor it reads, or, where it reads several or takes more
    arguments, as the watched dense call called it (its tensors each given the value that fits, its other
    arguments as they were)."""
    prefix = prefix_of(path)
    ins = _call_inputs(members, child, prefix, owner)
    outs = [member for member in members if any(user not in members for user in member.users)]
    for value in ins:  # a tensor of this module handed to its child (coordinates of a position MLP)
        if value not in env and value.op == "get_attr" and str(value.target).startswith(prefix):
            env[value] = graph.get_attr(str(value.target)[len(prefix):])
    if len(outs) != 1 or not ins or any(value not in env for value in ins):
        raise ValueError(f"its call of '{child}' does not read tensors of it and give one")
    name = child[len(prefix):]
    # a child that may take more than its input is called as the dense call called it (a size, a rate)
    call = watch.call(child, within=path) if watch and (len(ins) > 1 or takes(owner.get_submodule(name)) > 1) else None
    if call is None and (len(ins) != 1 or takes(owner.get_submodule(name), required=True) > 1):
        raise ValueError(f"its call of '{child}' takes more than one tensor, and that call is not watched")
    try:
        args, kwargs = ((env[ins[0]],), {}) if call is None else call_arguments(call, ins, env, watch.values)
    except ValueError as reason:
        raise ValueError(f"its call of '{child}': {reason}") from None
    # a child named `self` (Hugging Face's `attention.self`) would give a node named `self`, which the forward
    # torch.fx writes for the graph would assign over its own `self`
    called = graph.create_node("call_module", name, args, kwargs, name="self_call" if name == "self" else None)
    env[outs[0]] = graph.call_function(only_tensor, (called,))


def only_tensor(output):
    """The one tensor of a child's output, which the graph reads: alone, or the only one in a tuple, a dict or an
    output class (a patch embedding's `(tokens, height, width)`, whose sizes the graph holds as constants)."""
    if isinstance(output, torch.Tensor):
        return output
    tensors = leaves(output)
    if len(tensors) != 1:
        raise ValueError(f"the module returned {len(tensors)} tensors where its parent's graph reads one")
    return tensors[0]
