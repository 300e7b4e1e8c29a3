"""Which value of the pruned Program each argument of a module's call is, for a subgraph standing in for it.

The graph says which activations a module's operators read from outside, not which argument of its call each
came from. A watched call of the dense model (passed_tensors.py) gives the arguments: each tensor argument
takes the first value left that fits its shape (dtype, rank, first size, no size larger than the dense one),
in the order the call passes them; other arguments (a window size, a None mask) are kept as they were. A
wrong pairing computes something else, which the write-back's proof refuses. ValueError says why none is
made.
"""

from __future__ import annotations

import inspect

import torch
from torch import fx, nn

from prunefx.graph.attributes import get_tensor
from prunefx.interop.passed_tensors import PassedTensor, WatchedCall, activation_arguments, followed


def bound_inputs(inputs: list[fx.Node], call: WatchedCall | None, images: int | None
                 ) -> tuple[fx.Node, list[tuple[fx.Node | None, PassedTensor]]]:
    """The graph's input that is the module's input, and the arguments its other inputs come from. An argument
    that the dense module's output does not follow is taken and left unread (GC ViT's global query in a local
    block). One whose first size is the input's batch or the Program's batch of `images` takes any batch."""
    if call is None:
        if len(inputs) == 1:
            return inputs[0], []
        raise ValueError(f"its operators take {len(inputs)} tensors from outside, and its call is not watched")
    arguments = activation_arguments(call)
    unread = [each for each in arguments[1:] if len(arguments) > len(inputs) and followed(call, each) is False]
    arguments = [each for each in arguments if each not in unread]
    if len(arguments) != len(inputs) or arguments[0][1] != 0:
        raise ValueError(f"its operators take {len(inputs)} tensors from outside, and its call passes "
                         f"{len(arguments)} that its output follows, or not the input first")
    free, pairs = list(inputs), []
    for name, position, tensor in arguments:
        node = next((each for each in free if fits(each, tensor)), None)
        if node is None:
            raise ValueError(f"no tensor its operators take fits its argument '{name}'")
        free.remove(node)
        pairs.append((node, name, position, tensor))
    batches = {arguments[0][2].shape[0] if arguments[0][2].dim() else None, images} - {None}
    read = [(node, PassedTensor(name, position, tuple(node.meta["val"].shape),
                                batched=tensor.dim() > 0 and tensor.shape[0] in batches))
            for node, name, position, tensor in pairs[1:]]
    return pairs[0][0], read + [(None, PassedTensor(name, position, (), read=False)) for name, position, _ in unread]


def fits(node: fx.Node, tensor: torch.Tensor) -> bool:
    """Whether a graph value could be a dense call's `tensor` pruned (module docstring)."""
    value = node.meta.get("val")
    return (isinstance(value, torch.Tensor) and value.dtype == tensor.dtype and value.dim() == tensor.dim()
            and all(mine <= theirs for mine, theirs in zip(value.shape, tensor.shape))
            and (not value.dim() or value.shape[0] == tensor.shape[0]))


def takes(module: nn.Module, required: bool = False) -> int:
    """How many arguments the module's forward takes by position (those without a default, with `required`);
    one more for *args."""
    count = 0
    for parameter in inspect.signature(module.forward).parameters.values():
        if parameter.kind is parameter.VAR_POSITIONAL and not required:
            count += 1
        elif parameter.kind in (parameter.POSITIONAL_ONLY, parameter.POSITIONAL_OR_KEYWORD):
            count += not required or parameter.default is inspect.Parameter.empty
    return count


def call_arguments(call: WatchedCall, ins: list[fx.Node], env: dict) -> tuple[tuple, dict]:
    """The args and kwargs of a child's call in the subgraph: the watched call's, each tensor the value of `ins`
    that it is (a tensor the model holds) or that fits it, read from `env`."""
    free = list(ins)

    def argument(value):
        if isinstance(value, torch.Tensor):
            node = next((each for each in free if _held(each, value, call) or fits(each, value)), None)
            if node is None:
                raise ValueError("it passes a tensor that none of the values it reads fits")
            free.remove(node)
            return env[node]
        if _literal(value):
            return value
        raise ValueError(f"it passes a {type(value).__name__}, which a graph cannot hold")

    args, kwargs = tuple(argument(value) for value in call.args), {k: argument(v) for k, v in call.kwargs.items()}
    if free:
        raise ValueError("it reads values its dense call does not pass")
    return args, kwargs


def _held(node: fx.Node, value: torch.Tensor, call: WatchedCall) -> bool:
    """Whether `node` reads the model's tensor that the dense call passed (a buffer handed to a child)."""
    return node.op == "get_attr" and get_tensor(call.model, str(node.target)) is value


def _literal(value) -> bool:
    """A value a graph can hold as it is: a number, a string, None, or a tuple or list of those."""
    if isinstance(value, (tuple, list)):
        return all(_literal(each) for each in value)
    return value is None or type(value) in (bool, int, float, str)
