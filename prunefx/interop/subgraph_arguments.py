"""Which value of the pruned Program each argument of a module's call is, for a subgraph standing in for it.

The graph says which activations a module's operators read from outside, not which argument of its call each
came from. A watched call of the dense model (passed_tensors.py) gives the arguments, and the dense model's
capture, whose nodes have the pruned Program's names, gives each of those activations' dense values: an
argument is the activation whose value it holds on the example. Two that hold the same values cannot be told
apart, and are refused; an argument that holds none, where the module's output does not follow it, is taken
and left unread. Other arguments (a window size, a None mask) are kept as they were. ValueError says why none
is made.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch
from torch import fx, nn

from prunefx.graph.attributes import get_tensor
from prunefx.interop.passed_tensors import PassedTensor, WatchedCall, activation_arguments, followed
from prunefx.interop.subgraph_call import call_input, forward_parameters, input_list, plain

Values = Callable[[list[str]], dict[str, torch.Tensor]]  # dense values of graph nodes, by name


def bound_inputs(inputs: list[fx.Node], call: WatchedCall | None, images: int | None, values: Values
                 ) -> tuple[list[tuple[fx.Node, int | None]], list[tuple[fx.Node | None, PassedTensor]]]:
    """The graph's inputs that are the module's input, each with its index where that is a list of tensors (None
    for a tensor), and the arguments its other inputs come from (module docstring). One whose first size is the
    input's batch or the Program's batch of `images` takes any batch."""
    if call is None:
        if len(inputs) == 1:
            return [(inputs[0], None)], []
        raise ValueError(f"its operators take {len(inputs)} tensors from outside, and its call is not watched")
    arguments = activation_arguments(call)
    if len(inputs) == 1 and len(arguments) == 1:
        pairs, unread = [(inputs[0], *arguments[0])], []
    else:
        pairs, unread = _paired(inputs, arguments, call, values)
    first = [pair for pair in pairs if pair[2] == 0]
    if not first:
        raise ValueError("its call does not pass the input it reads first")
    x_tensor = first[0][3]
    batches = {x_tensor.shape[0] if x_tensor.dim() else None, images} - {None}
    read = [(node, PassedTensor(name, position, tuple(node.meta["val"].shape),
                                batched=tensor.dim() > 0 and tensor.shape[0] in batches))
            for node, name, position, tensor in pairs if position != 0]
    unread_read = [(None, PassedTensor(name, position, (), read=False)) for name, position in unread]
    return [(node, _entry_index(call, tensor)) for node, _, _, tensor in first], read + unread_read


def _entry_index(call: WatchedCall, tensor: torch.Tensor) -> int | None:
    """Where `tensor` is in the call's input where that is a list of tensors; None where it is the input."""
    x = call_input(call, call.owner)
    return next(index for index, each in enumerate(x) if each is tensor) if input_list(x) else None


def returned_order(outputs: list[fx.Node], call: WatchedCall | None, values: Values) -> list[fx.Node]:
    """The graph's outputs in the order the module's dense call returned them, each the one whose dense value
    that returned tensor holds; ValueError where the call returned others too, or two cannot be told apart."""
    if call is None or call.returned is None or len(call.returned_tensors) != len(outputs):
        raise ValueError(f"its operators give {len(outputs)} tensors, and its call does not return those alone")
    dense = values([node.name for node in outputs])
    ordered: list[fx.Node] = []
    for tensor in call.returned_tensors:
        matches = [node for node in outputs if node.name in dense and _holds(dense[node.name], tensor)]
        if len(matches) != 1 or matches[0] in ordered:
            raise ValueError(f"its call returns {len(call.returned_tensors)} tensors that its {len(outputs)} values "
                             "cannot be paired with one by one on the example")
        ordered.append(matches[0])
    return ordered


def _paired(inputs: list[fx.Node], arguments: list, call: WatchedCall, values: Values) -> tuple[list, list]:
    dense = values([node.name for node in inputs])
    pairs, unread = [], []
    for name, position, tensor in arguments:
        matches = [node for node in inputs if node.name in dense and _holds(dense[node.name], tensor)]
        if len(matches) > 1:
            raise ValueError(f"its argument '{name}' holds the values of {len(matches)} of the tensors its operators "
                             "read on the example: which it is cannot be told")
        if matches:
            pairs.append((matches[0], name, position, tensor))
        elif followed(call, (name, position, tensor)) is False:
            unread.append((name, position))
        else:
            raise ValueError(f"its argument '{name}' holds none of the tensors its operators read")
    if sorted(id(pair[0]) for pair in pairs) != sorted(id(node) for node in inputs):
        raise ValueError("its operators read a tensor that its call does not pass")
    return pairs, unread


def _holds(dense: torch.Tensor, tensor: torch.Tensor) -> bool:
    """Whether an argument holds a node's dense value (the capture computes what eager does, to rounding; a
    mask or an index exactly)."""
    if dense.shape != tensor.shape or dense.dtype != tensor.dtype:
        return False
    if not tensor.is_floating_point() or not tensor.numel():
        return torch.equal(dense, tensor)
    return torch.allclose(dense, tensor, rtol=1e-4, atol=1e-6 * max(1.0, float(tensor.abs().max())))


def takes(module: nn.Module, required: bool = False) -> int:
    """How many arguments the module's forward takes by position (those without a default, with `required`);
    one more for *args. One where its signature cannot be read."""
    parameters = forward_parameters(module)
    if parameters is None:
        return 1
    count = 0
    for parameter in parameters:
        if parameter.kind is parameter.VAR_POSITIONAL and not required:
            count += 1
        elif parameter.kind in (parameter.POSITIONAL_ONLY, parameter.POSITIONAL_OR_KEYWORD):
            count += not required or parameter.default is inspect.Parameter.empty
    return count


def call_arguments(call: WatchedCall, ins: list[fx.Node], env: dict, values: Values) -> tuple[tuple, dict]:
    """The args and kwargs of a child's call in the subgraph: the watched call's, each tensor the value of `ins`
    that it is (a tensor the model holds) or whose dense value it holds, read from `env`. A tensor that holds
    none of them (a mask the child ignores: the graph never reads it) is left out, and its parameter keeps its
    default: the arguments after it go by name. The proof decides."""
    dense = values([node.name for node in ins if node.op != "get_attr"])
    free, unread = list(ins), object()

    def argument(value):
        if isinstance(value, torch.Tensor):
            held = [node for node in free if _held(node, value, call)]
            matches = held or [node for node in free if node.name in dense and _holds(dense[node.name], value)]
            if len(matches) > 1:
                raise ValueError(f"it passes a tensor that {len(matches)} of the values it reads hold")
            if not matches:
                return unread
            free.remove(matches[0])
            return env[matches[0]]
        if plain(value):
            return value
        raise ValueError(f"it passes a {type(value).__name__}, which a graph cannot hold")

    args, kwargs = [argument(value) for value in call.args], {k: argument(v) for k, v in call.kwargs.items()}
    if free:
        raise ValueError("it reads values its dense call does not pass")
    kwargs = {key: value for key, value in kwargs.items() if value is not unread}
    if unread in args:
        names = _positional_names(call.owner)
        cut = args.index(unread)
        if len(names) < len(args):
            raise ValueError("it passes a tensor it does not read, by a position that has no name")
        kwargs.update({names[i]: value for i, value in enumerate(args) if i > cut and value is not unread})
        args = args[:cut]
    return tuple(args), kwargs


def _positional_names(module: nn.Module) -> list[str]:
    return [p.name for p in forward_parameters(module) or () if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]


def _held(node: fx.Node, value: torch.Tensor, call: WatchedCall) -> bool:
    """Whether `node` reads the model's tensor that the dense call passed (a buffer handed to a child)."""
    return node.op == "get_attr" and get_tensor(call.model, str(node.target)) is value

