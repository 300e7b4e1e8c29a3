"""Tensors of other modules that a module's caller passes in: what a subgraph standing in for it reads from its call.

A module made again from its pruned subgraph (subgraph_module.py) reads one activation. Its code may also read
a tensor that its caller passes as an argument and the graph holds as another module's (timm's EVA attention
takes the rotary table `rope` that the model reads from `self.rope`). Which argument that is, the graph does not
say: one call of the dense model is watched, and an argument that is that very tensor, and that the module's
output follows, names it. The subgraph then reads it from the same argument of every call, checked to have
its shape.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
import torch.utils._pytree as pytree
from torch import nn

from prunefx.graph.attributes import get_tensor
from prunefx.graph.model_state import hook_state_kept, random_state_kept


@dataclass(frozen=True)
class PassedTensor:
    name: str                  # the argument's name in the module's forward
    position: int | None       # its position there, the input 0 (None: keyword only)
    shape: tuple[int, ...]     # as the pruned Program holds it


def passed_tensors(model: nn.Module, inputs: tuple, path: str, targets: list[str]) -> dict[str, tuple[str, int | None]]:
    """For each target (a tensor of another module that the code of the module at `path` reads) that its caller
    passes as an argument the module reads, that argument's (name, position); from one call of `model` (a
    dense copy of the user's, in eval mode as the proof runs) on `inputs`. Nothing where that call fails."""
    owner, seen = model.get_submodule(path), []
    # the user's hooks run as in a call of the model, what they keep put back; this one is added after, so kept
    with torch.no_grad(), hook_state_kept(model), random_state_kept(list(model.parameters())):
        handle = owner.register_forward_pre_hook(lambda module, args, kwargs: seen.append((args, kwargs)),
                                                 with_kwargs=True)
        try:
            model(*inputs)
            if len(seen) != 1:
                return {}
            return {target: argument for target in targets
                    if (argument := _argument_read(owner, *seen[0], get_tensor(model, target))) is not None}
        except Exception:  # the user's code, with its own errors: no binding, and the subgraph is refused
            return {}
        finally:
            handle.remove()


def _argument_read(owner: nn.Module, args: tuple, kwargs: dict, tensor: torch.Tensor) -> tuple[str, int | None] | None:
    """(name, position) of the argument of the call `args`, `kwargs` that is `tensor` itself, where the module's
    output changes with it (a module may hold the tensor otherwise and ignore the argument); else None."""
    names = list(inspect.signature(owner.forward).parameters)
    for index, value in enumerate(args):
        if value is tensor:
            other = tuple(value + 1 if i == index else each for i, each in enumerate(args))
            return (names[index], index) if index < len(names) and _changes(owner, args, kwargs, other, kwargs) else None
    for name, value in kwargs.items():
        if value is tensor:
            other = {**kwargs, name: value + 1}
            position = names.index(name) if name in names else None
            return (name, position) if _changes(owner, args, kwargs, args, other) else None
    return None


def _changes(owner: nn.Module, args: tuple, kwargs: dict, other_args: tuple, other_kwargs: dict) -> bool:
    first = pytree.tree_leaves(owner(*args, **kwargs))
    second = pytree.tree_leaves(owner(*other_args, **other_kwargs))
    return any(not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and torch.equal(a, b))
               for a, b in zip(first, second))


def taken(passed: list[PassedTensor], args: tuple, kwargs: dict, owner: str) -> list[torch.Tensor]:
    """The tensors a call gives for `passed`, in order (`args` after the input); ValueError where one is missing
    or not of the Program's shape, or where the call gives another tensor the graph cannot read."""
    values, used_positions, used_names = [], set(), set()
    for each in passed:
        if each.name in kwargs:
            value = kwargs[each.name]
            used_names.add(each.name)
        elif each.position is not None and 0 < each.position <= len(args):
            value = args[each.position - 1]
            used_positions.add(each.position - 1)
        else:
            raise ValueError(f"the subgraph of {owner} reads '{each.name}', which its caller does not pass")
        if not isinstance(value, torch.Tensor) or tuple(value.shape) != each.shape:
            raise ValueError(f"the subgraph of {owner} reads '{each.name}' as a tensor of shape "
                             f"{list(each.shape)}, and its caller passes {_described(value)}")
        values.append(value)
    rest = [value for index, value in enumerate(args) if index not in used_positions]
    rest += [value for name, value in kwargs.items() if name not in used_names]
    rest = pytree.tree_leaves(rest)  # tensors in a list or dict too
    # what else the caller passes (a window size, a None mask) was a constant when the Program was captured;
    # a tensor there would be one the graph cannot see
    if any(isinstance(value, torch.Tensor) for value in rest):
        count = f"{1 + len(passed)} tensors" if passed else "one tensor"
        raise ValueError(f"the subgraph of {owner} reads {count}, and its caller passes more")
    return values


def _described(value) -> str:
    return f"one of shape {list(value.shape)}" if isinstance(value, torch.Tensor) else type(value).__name__
