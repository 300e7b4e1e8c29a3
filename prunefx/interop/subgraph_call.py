"""What a module made from its subgraph (subgraph_module.py) takes and returns besides the tensors its graph reads
and computes: both are those of one watched call of the dense model (passed_tensors.py).

The graph computes the one tensor the rest of the model reads; the module's callers may expect more around it:
Hugging Face attention returns `(output, weights)` with the weights None, a stage `(tokens, height, width)`, a
backbone a model output class. That structure is kept, with its other entries as they were (None, sizes of the
fixed image) where each is a plain value; else the bare tensor is returned and the proof decides. The call's
plain arguments (a flag, a size) were constants when the Program was captured: a call passing others is
refused, not computed as the captured one. A caller may pass the input by the name of the forward's first
parameter (PVT's encoder: `pixel_values=`).
"""

from __future__ import annotations

import inspect
import pickle
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.utils._pytree as pytree
from torch import nn

if TYPE_CHECKING:
    from prunefx.interop.passed_tensors import WatchedCall

_PLAIN = (type(None), bool, int, float, str, torch.dtype, torch.device)


def plain(value) -> bool:
    """A value a graph holds as a constant: None, a number, a string, a dtype or device, or a tuple or list of those
    (torch.Size is one)."""
    if isinstance(value, (tuple, list)):
        return all(plain(each) for each in value)
    return isinstance(value, _PLAIN)


@dataclass(frozen=True)
class ReturnedLike:
    spec: pytree.TreeSpec
    leaves: tuple    # the dense call's entries, the tensors' places None
    place: int       # where the (first) tensor goes
    more: tuple[int, ...] = ()  # where the others go, for a module giving several (DPT's reassemble stage)

    @classmethod
    def of(cls, output) -> ReturnedLike | None:
        """The structure of `output` around its tensors; None for a bare tensor, a structure holding objects that
        are neither tensors nor plain values, or one that cannot be pickled (a class made in a forward)."""
        if output is None or isinstance(output, torch.Tensor):
            return None
        leaves, spec = pytree.tree_flatten(output)
        places = [index for index, leaf in enumerate(leaves) if isinstance(leaf, torch.Tensor)]
        if not places or not all(plain(leaf) for index, leaf in enumerate(leaves) if index not in places):
            return None
        try:
            pickle.dumps(spec)  # the module it goes into is saved with torch.save
        except Exception:
            return None
        return cls(spec, tuple(None if index in places else leaf for index, leaf in enumerate(leaves)), places[0],
                   tuple(places[1:]))

    @property
    def tensors(self) -> int:
        return 1 + len(self.more)

    def around(self, output):
        """The graph's output in the dense call's structure: its tensor, or its tuple of tensors in the order of
        their places."""
        leaves = list(self.leaves)
        for place, tensor in zip((self.place, *self.more), output if self.more else (output,)):
            leaves[place] = tensor
        return pytree.tree_unflatten(leaves, self.spec)


@dataclass(frozen=True)
class CalledWith:
    """The plain arguments of the dense call after its input, by position and by name."""
    positions: tuple[tuple[int, object], ...]
    names: tuple[tuple[str, object], ...]

    @classmethod
    def of(cls, args: tuple, kwargs: dict) -> CalledWith:
        """`args` after the input."""
        return cls(tuple((index, value) for index, value in enumerate(args) if plain(value)),
                   tuple(sorted((name, value) for name, value in kwargs.items() if plain(value))))

    def differs(self, args: tuple, kwargs: dict) -> str | None:
        """Where a call passes other plain arguments than the dense call did (`args` after the input): which."""
        given = CalledWith.of(args, kwargs)
        for mine, theirs, label in ((dict(self.positions), dict(given.positions), "argument {} after the input"),
                                    (dict(self.names), dict(given.names), "'{}'")):
            for key in sorted({*mine, *theirs}, key=str):
                if key not in mine or key not in theirs or mine[key] != theirs[key]:
                    return f"{label.format(key + 1 if isinstance(key, int) else key)} is {theirs.get(key)!r}, " \
                           f"where the model's call gave {mine.get(key)!r}"
        return None


def besides_input(call: WatchedCall, owner: nn.Module, outputs: int
                  ) -> tuple[ReturnedLike | None, CalledWith, int | None]:
    """What the dense call returned the graph's `outputs` tensors in (None where it returned others too, which
    the graph does not compute: the proof decides), the plain arguments it passed after the input, and how many
    tensors its input held where that was a list of them (else None)."""
    args, kwargs = call.args, call.kwargs
    if args:
        args = args[1:]
    else:  # the input passed by name
        kwargs = {name: value for name, value in kwargs.items() if name != input_name(owner)}
    returned = call.returned if call.returned is not None and call.returned.tensors == outputs else None
    x = call_input(call, owner)
    return returned, CalledWith.of(args, kwargs), len(x) if input_list(x) else None


def call_input(call: WatchedCall, owner: nn.Module):
    """What the call passed as the module's input: its first argument, or the one named as the forward's first."""
    return call.args[0] if call.args else call.kwargs.get(input_name(owner))


def input_list(value) -> bool:
    """An input that is a list or tuple of tensors (DPT's reassemble stage takes the backbone's hidden states)."""
    return isinstance(value, (list, tuple)) and bool(value) and all(isinstance(each, torch.Tensor) for each in value)


def input_name(owner: nn.Module) -> str | None:
    """The name of the input of the module's forward (its first parameter): what a caller may pass it as."""
    parameters = forward_parameters(owner) or []
    first = next((each for each in parameters if each.kind in (each.POSITIONAL_ONLY, each.POSITIONAL_OR_KEYWORD)),
                 None)
    return first.name if first is not None else None


def forward_parameters(module: nn.Module) -> list[inspect.Parameter] | None:
    """The parameters of the module's forward; None where its signature cannot be read."""
    try:
        return list(inspect.signature(module.forward).parameters.values())
    except (TypeError, ValueError):
        return None
