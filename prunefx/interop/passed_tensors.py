"""What a module's caller passes in besides its input: what a subgraph standing in for it reads from its call.

A module made again from its pruned subgraph (subgraph_module.py) reads its input. Its code may also read
a tensor that its caller passes as an argument and the graph holds as another module's (timm's EVA attention
takes the rotary table `rope` that the model reads from `self.rope`), or further activations (DINOv3's rotary
table computed on each call, GC ViT's global query). Which argument is which, the graph does not say: one call
of the dense model is watched (`CallWatcher`). An argument that is that very tensor, and that the module's
output follows, names a module's tensor; activations are the call's other tensors, each paired with the
graph's input whose value on the dense capture it holds (subgraph_arguments.py). The subgraph then reads them
from the same arguments of every call, checked to have their shapes (an activation's batch may differ).
"""

from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass

import torch
import torch.utils._pytree as pytree
from torch import fx, nn

from prunefx.graph.attributes import get_tensor
from prunefx.graph.model_state import hook_state_kept, random_state_kept
from prunefx.graph.tensor_copies import tensor_copies
from prunefx.interop.subgraph_call import ReturnedLike, input_list


@dataclass(frozen=True)
class PassedTensor:
    name: str                  # the argument's name in the module's forward
    position: int | None       # its position there, the input 0 (None: keyword only)
    shape: tuple[int, ...]     # as the pruned Program holds it
    batched: bool = False      # an activation with the batch first: any batch is taken
    read: bool = True          # False: an argument the module ignores (GC ViT's global query in a local block)


@dataclass(frozen=True)
class WatchedCall:
    """One call of a module of a dense copy of the user's model: the module, what it was called with and, for
    the module watched, the structure it returned its tensor in (subgraph_call.py)."""
    model: nn.Module
    owner: nn.Module
    args: tuple
    kwargs: dict
    returned: ReturnedLike | None = None
    returned_tensors: tuple = ()  # its tensors, in the structure's order: which of the graph's outputs is which


class CallWatcher:
    """The calls of the modules of one dense copy of the user's model (made when first needed): a module's call
    (`call(path)`), and the calls of the modules inside it while it runs (`call(child, within=path)`: a module
    shared by several blocks is called once by each). One run watches every module of `expected` not yet
    watched (those a subgraph may stand in for), and one more each module asked about besides. None for a
    module called other than once there, or where the run fails."""

    def __init__(self, model: nn.Module, inputs: tuple, dense: fx.GraphModule | None = None,
                 expected: list[str] = ()):
        self._model, self._inputs, self._dense = model, inputs, dense
        self._expected = list(expected)
        self._copy: nn.Module | None = None
        self._calls: dict[str, dict[str, WatchedCall | None]] = {}  # by the module watched, then by path
        self._values: dict[str, torch.Tensor] = {}
        self._absent: set[str] = set()

    def values(self, names: list[str]) -> dict[str, torch.Tensor]:
        """The values of the dense graph's nodes of these names on the example (`dense`: the dense model's
        capture, whose nodes have the pruned Program's names), those it has; one run of it for those not kept."""
        wanted = set(names) - self._values.keys() - self._absent
        self._absent |= wanted  # what one run does not give, no later run gives either
        if wanted and self._dense is not None:
            kept, absent = self._values, self._absent

            class Keeping(fx.Interpreter):
                def run_node(self, node):
                    value = super().run_node(node)
                    if node.name in wanted and isinstance(value, torch.Tensor):
                        kept[node.name] = value
                        absent.discard(node.name)
                    return value

            with torch.no_grad():
                try:
                    Keeping(self._dense).run(*self._inputs)
                except Exception:  # no values: the pairing that needs them refuses
                    pass
        return {name: self._values[name] for name in names if name in self._values}

    def call(self, path: str, within: str | None = None) -> WatchedCall | None:
        watched = path if within is None else within
        if watched not in self._calls:
            batch = [watched] + [each for each in self._expected if each not in self._calls and each != watched]
            self._calls.update(self._watch(batch if watched in self._expected else [watched]))
        return self._calls[watched].get(path)

    def called(self, path: str) -> set[str] | None:
        """The modules inside module `path` that its one call called (by path); None where that call is unknown."""
        self.call(path)
        calls = self._calls[path]
        return set(calls) if calls.get(path) is not None else None

    def _watch(self, paths: list[str]) -> dict[str, dict[str, WatchedCall | None]]:
        """For each of `paths`, the calls of every module inside it while it runs, in one run of the model."""
        if self._copy is None:
            self._copy = copy.deepcopy(self._model).eval()  # eval: the mode the proof runs in
        model, handles = self._copy, []
        recorders = {path: _Recorder(model, path) for path in paths if _is_module(model, path)}
        # the user's hooks run as in a call of the model, what they keep put back; these are added after, so kept
        with torch.no_grad(), hook_state_kept(model), random_state_kept(list(model.parameters())):
            for recorder in recorders.values():
                handles += recorder.hooks()
            try:
                model(*(x.clone() for x in self._inputs))  # the user's code may write into its input
            except Exception:  # the user's code, with its own errors: no binding, and the subgraph is refused
                return {path: {} for path in paths}
            finally:
                for handle in handles:
                    handle.remove()
        return {path: recorders[path].calls() if path in recorders else {} for path in paths}


def _is_module(model: nn.Module, path: str) -> bool:
    try:
        model.get_submodule(path)
    except AttributeError:
        return False
    return True


class _Recorder:
    """The calls of the modules inside module `path` while it runs (module `path`'s own call included)."""

    def __init__(self, model: nn.Module, path: str):
        self.path, self.model = path, model
        self.inside = {f"{path}.{name}" if path and name else path or name: module
                       for name, module in model.get_submodule(path).named_modules(remove_duplicate=False)}
        self.seen: dict[str, list] = {name: [] for name in self.inside}
        self.running: list[bool] = []
        self.returned: list[ReturnedLike | None] = []  # the structure of what each of the module's calls returned
        self.returned_tensors: list[tuple] = []

    def hooks(self) -> list:
        owner = self.inside[self.path]
        # first: what the module itself returns, before the user's hooks (which its stand-in keeps) see it
        handles = [owner.register_forward_pre_hook(lambda *_: self.running.append(True)),
                   owner.register_forward_hook(self._returned, always_call=True, prepend=True)]
        return handles + [module.register_forward_pre_hook(self._record(name), with_kwargs=True)
                          for name, module in self.inside.items()]

    def _returned(self, module, args, output) -> None:
        self.running.clear()
        self.returned.append(ReturnedLike.of(output))  # read now: its caller may change a list it returned
        self.returned_tensors.append(tuple(leaf for leaf in pytree.tree_leaves(output) if isinstance(leaf, torch.Tensor)))

    def _record(self, name: str):
        def hook(module, args, kwargs):
            if name == self.path or self.running:
                self.seen[name].append((args, kwargs))
        return hook

    def calls(self) -> dict[str, WatchedCall | None]:
        once = len(self.returned) == 1
        returned, tensors = (self.returned[0], self.returned_tensors[0]) if once else (None, ())
        return {name: WatchedCall(self.model, self.inside[name], *calls[0], returned=returned if name == self.path
                                  else None, returned_tensors=tensors if name == self.path else ())
                if len(calls) == 1 else None for name, calls in self.seen.items() if calls}  # those called


def passed_tensors(call: WatchedCall, targets: list[str]) -> dict[str, tuple[str, int | None]]:
    """For each target (a tensor of another module that the watched module's code reads) that its caller
    passes as an argument the module reads, that argument's (name, position)."""
    arguments = _arguments(call)
    found = {}
    for target in targets:
        tensor = get_tensor(call.model, target)
        argument = next((each for each in arguments if each[2] is tensor), None)
        if argument is not None and followed(call, argument) is True:
            found[target] = argument[:2]
    return found


def activation_arguments(call: WatchedCall) -> list[tuple[str, int | None, torch.Tensor]]:
    """The watched call's tensor arguments that are not tensors the model holds, as (name, position, tensor),
    positional ones first, each of an input list its own ('name[i]', 0, tensor); other nested ones (in a list or
    dict) make it refuse (ValueError)."""
    held = {id(tensor) for tensor in (*call.model.parameters(), *call.model.buffers())}
    found = []
    for name, position, value in _arguments(call):
        if isinstance(value, torch.Tensor):
            if id(value) not in held:
                found.append((name, position, value))
        elif position == 0 and input_list(value):  # its input, a list of tensors: each its own
            found += [(f"{name}[{index}]", 0, each) for index, each in enumerate(value)]
        elif any(isinstance(leaf, torch.Tensor) for leaf in pytree.tree_leaves(value)):
            raise ValueError(f"its call passes tensors inside '{name}'")
    return found


def _arguments(call: WatchedCall) -> list[tuple[str, int | None, object]]:
    """(name, position, value) of each argument of the call: by position, then by keyword."""
    names = list(inspect.signature(call.owner.forward).parameters)
    named = [(names[i] if i < len(names) else f"arg{i}", i, value) for i, value in enumerate(call.args)]
    return named + [(name, names.index(name) if name in names else None, value) for name, value in call.kwargs.items()]


def followed(call: WatchedCall, argument: tuple[str, int | None, torch.Tensor]) -> bool | None:
    """Whether the module's output changes with the tensor `argument` (+1 on it): False where the module holds
    or ignores what its caller passes; None where the call fails. The user's hooks and random state are left
    as they were."""
    value = argument[2]
    with torch.no_grad(), hook_state_kept(call.model), random_state_kept(list(call.model.parameters())):
        try:  # on copies: a module that writes into its arguments leaves the watched call as it was
            # that tensor, wherever the call passes it (an input list's entry too), plus one
            args, kwargs = pytree.tree_map(lambda leaf: leaf + 1 if leaf is value else leaf, (call.args, call.kwargs))
            first = pytree.tree_leaves(call.owner(*tensor_copies(call.args), **tensor_copies(call.kwargs)))
            second = pytree.tree_leaves(call.owner(*tensor_copies(args), **tensor_copies(kwargs)))
        except Exception:  # the user's code, with its own errors: no answer, and the subgraph is refused
            return None
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
        elif not each.read:
            continue
        else:
            raise ValueError(f"the subgraph of {owner} reads '{each.name}', which its caller does not pass")
        if not each.read:  # the module's code does not read it (checked on the dense call)
            continue
        if not isinstance(value, torch.Tensor) or value.dim() != len(each.shape) \
                or tuple(value.shape)[each.batched:] != each.shape[each.batched:]:
            raise ValueError(f"the subgraph of {owner} reads '{each.name}' as a tensor of shape "
                             f"{list(each.shape)}, and its caller passes {_described(value)}")
        values.append(value)
    rest = [value for index, value in enumerate(args) if index not in used_positions]
    rest += [value for name, value in kwargs.items() if name not in used_names]
    rest = pytree.tree_leaves(rest)  # tensors in a list or dict too
    # what else the caller passes (a window size, a None mask) was a constant when the Program was captured;
    # a tensor there would be one the graph cannot see
    if any(isinstance(value, torch.Tensor) for value in rest):
        read = sum(each.read for each in passed)
        count = f"{1 + read} tensors" if read else "one tensor"
        raise ValueError(f"the subgraph of {owner} reads {count}, and its caller passes more")
    return values


def _described(value) -> str:
    return f"one of shape {list(value.shape)}" if isinstance(value, torch.Tensor) else type(value).__name__
