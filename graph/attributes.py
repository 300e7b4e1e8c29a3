"""Reading and writing the tensors that get_attr nodes reach (parameters and buffers).

Passes rewrite weights through these helpers only, so that a new tensor keeps the kind of the old
one (Parameter with its requires_grad, or buffer) and unused tensors leave the state dict.
"""

from __future__ import annotations

import torch


def _owner(module: torch.nn.Module, target: str) -> tuple[torch.nn.Module, str]:
    prefix, _, name = target.rpartition(".")
    owner: torch.nn.Module | None = module
    for part in prefix.split(".") if prefix else ():  # merge_blocks reads every layer's tensors after each merge:
        owner = owner._modules.get(part) if owner is not None else None  # the dicts, not get_submodule's checks
    return (owner if owner is not None else module.get_submodule(prefix)), name  # the latter names what is missing


def get_tensor(module: torch.nn.Module, target: str) -> torch.Tensor:
    owner, name = _owner(module, target)
    return getattr(owner, name)


def set_tensor(module: torch.nn.Module, target: str, value: torch.Tensor, *, parameter: bool | None = None) -> None:
    """Store `value` at `target`. By default it becomes what the tensor already there was
    (a Parameter keeps being one, with the same requires_grad); new names become Parameters."""
    owner, name = _owner(module, target)
    previous = getattr(owner, name, None)
    if parameter is None:
        parameter = previous is None or isinstance(previous, torch.nn.Parameter)
    value = value.detach()
    if name in vars(owner):  # a plain tensor attribute (a constant torch.export lifted), neither kind
        if not parameter:
            setattr(owner, name, value)
            return
        delattr(owner, name)
    if parameter:
        requires_grad = previous.requires_grad if isinstance(previous, torch.nn.Parameter) else True
        if name in owner._buffers:
            del owner._buffers[name]
        owner.register_parameter(name, torch.nn.Parameter(value, requires_grad=requires_grad))
    else:
        if name in owner._parameters:
            del owner._parameters[name]
        owner.register_buffer(name, value)


def free_name(module: torch.nn.Module, wanted: str) -> str:
    """`wanted` if no attribute has that name yet, else `wanted_1`, `wanted_2`, ..."""
    candidate, index = wanted, 0
    while True:
        owner, name = _owner(module, candidate)
        if not hasattr(owner, name):
            return candidate
        index += 1
        candidate = f"{wanted}_{index}"


def delete_unused_tensors(module: torch.fx.GraphModule) -> list[str]:
    """Remove parameters and buffers that no get_attr node reaches any more; return their names. Every name
    counts, not only a shared tensor's first: else each call dropped one more unused alias of a module shared
    by several parents (timm CoaT's position encoding), and two programs of one model disagreed on its names."""
    used = {node.target for node in module.graph.nodes if node.op == "get_attr"}
    removed = []
    names = [name for name, _ in module.named_parameters(remove_duplicate=False)]
    for target in names + [name for name, _ in module.named_buffers(remove_duplicate=False)]:
        if target not in used:
            owner, name = _owner(module, target)
            owner._parameters.pop(name, None)
            owner._buffers.pop(name, None)
            removed.append(target)
    return removed


def users_of_tensor(module: torch.fx.GraphModule, target: str) -> list[torch.fx.Node]:
    """Every node that uses the tensor at `target`, through any get_attr node that reaches it."""
    return [user for node in module.graph.nodes if node.op == "get_attr" and node.target == target
            for user in node.users]


def attribute_name(arg: object) -> str | None:
    """The dotted name of the tensor a `get_attr` node reads; None for any other argument (a computed
    tensor, a literal, None)."""
    return str(arg.target) if isinstance(arg, torch.fx.Node) and arg.op == "get_attr" else None


def tensor_name(arg: object) -> str:
    """attribute_name for an argument the caller knows is a `get_attr` node."""
    name = attribute_name(arg)
    if name is None:
        raise TypeError(f"expected a get_attr node, got {arg!r}")
    return name
