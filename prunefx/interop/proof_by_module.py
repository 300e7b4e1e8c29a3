"""The write-back's proof, module by module: each module of the user's code returns, on the proof's inputs, the
value the pruned Program computes where that module's call ends.

The outputs alone can hide a wrong module: an error made inside a block shrinks on its way to the output once
the residual stream adds to it (an attention on random weights, near uniform, with its queries scaled twice:
7e-3 at the attention, 4e-6 at the output, under the outputs' tolerance). A module compared is one of the
user's code (torch's own layers compute what their tensors say), called once, whose operators in the Program
give one value to the rest of the graph, and that returns one tensor of that value's shape (alone, or the only
one in a tuple or an output class); and, so that no pattern of the user's code (a call whose result is dropped,
a value kept in an attribute) is taken for an error, one whose dense original returns its dense capture's
value there (`agreeing`). An attention whose queries hold its dense scale (attention_scale.py) rounds
otherwise, and its query parts differ by design: skipped with what is inside it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.utils._pytree as pytree
from torch import fx, nn

from prunefx.graph import Program


@dataclass(frozen=True)
class ModuleEnd:
    value: fx.Node  # the one node of the module's operators that the rest of the graph reads
    last: fx.Node   # its last operator: an in-place one (ReLU(inplace=True)) may still write into `value`


def module_ends(program: Program, module: nn.Module, among: set[str] | None = None) -> dict[str, ModuleEnd]:
    """Where each comparable module's call ends in the Program (module docstring), by module path; with `among`,
    only those paths."""
    calls: dict[str, set[str]] = {}
    members: dict[str, list[fx.Node]] = {}
    for node in program.graph.nodes:
        if node.op != "call_function":
            continue
        for key, (path, _) in (node.meta.get("nn_module_stack") or {}).items():
            if isinstance(path, str):
                calls.setdefault(path, set()).add(key)
                members.setdefault(path, []).append(node)
    ends = {}
    for path in _own_code(module):
        if len(calls.get(path, ())) != 1 or (among is not None and path not in among):
            continue
        inside = set(members[path])
        leaving = [node for node in members[path] if any(user not in inside for user in node.users)]
        if len(leaving) == 1 and isinstance(leaving[0].meta.get("val"), torch.Tensor):
            ends[path] = ModuleEnd(leaving[0], members[path][-1])
    return ends


def _own_code(module: nn.Module) -> list[str]:
    """Modules of the user's (or a library's) code, reached by one name only, neither an attention whose query
    parts hold a folded scale nor inside one."""
    names: dict[int, int] = {}
    for _, each in module.named_modules(remove_duplicate=False):
        names[id(each)] = names.get(id(each), 0) + 1
    folded = [path for path, each in module.named_modules() if vars(each).get("_prunefx_scale_folded")]
    return [path for path, each in module.named_modules()
            if path and not type(each).__module__.startswith("torch.") and names[id(each)] == 1
            and not any(path == other or path.startswith(f"{other}.") for other in folded)]


def program_values(program: Program, inputs: tuple, ends: dict[str, ModuleEnd]
                   ) -> tuple[object, dict[str, torch.Tensor]]:
    """The Program's outputs on `inputs`, and each module's value as its last operator leaves it, by path."""
    values: dict[str, torch.Tensor] = {}
    held: dict[fx.Node, torch.Tensor] = {}  # a value the interpreter may free before the module's call ends
    pending: dict[fx.Node, int] = {}  # how many modules still wait for each held value
    closing: dict[fx.Node, list[str]] = {}
    for path, end in ends.items():
        closing.setdefault(end.last, []).append(path)
        pending[end.value] = pending.get(end.value, 0) + 1

    class Keeping(fx.Interpreter):
        def run_node(self, node):
            value = super().run_node(node)
            if node in pending:
                held[node] = value
            copies: dict[fx.Node, torch.Tensor] = {}
            for path in closing.get(node, ()):
                end = ends[path].value
                if end not in copies:  # later operators may write into it in place
                    copies[end] = held[end].clone()
                values[path] = copies[end]
                pending[end] -= 1
                if not pending[end]:
                    del held[end]
            return value

    return Keeping(program.module).run(*inputs), values


def leaves(outputs) -> list[torch.Tensor]:
    """The tensors in a module's or a Program's outputs (a tuple, a dict, an output class), in order."""
    return [leaf for leaf in pytree.tree_leaves(outputs) if isinstance(leaf, torch.Tensor)]


class Differences:
    """While open (`watched`), each module's call compared with the Program's value where it ends (relative to
    that value's largest finite magnitude); `first`: the first module, in the order calls end (the innermost
    first), called once and differing by more than `tolerance`."""

    def __init__(self, tolerance: float):
        self.tolerance = tolerance
        self.errors: dict[str, list[float | None]] = {}  # by path, an error per call (None: not comparable)

    def compare(self, path: str, expected: torch.Tensor, actual) -> None:
        self.errors.setdefault(path, []).append(_error(expected, actual))

    @property
    def first(self) -> tuple[str, float] | None:
        for path, errors in self.errors.items():  # in the order the calls ended
            if len(errors) == 1 and errors[0] is not None and errors[0] > self.tolerance:
                return path, errors[0]
        return None

    def agreeing(self) -> set[str]:
        """The paths called once whose call returned the Program's value."""
        return {path for path, errors in self.errors.items()
                if len(errors) == 1 and errors[0] is not None and errors[0] <= self.tolerance}


def _error(expected: torch.Tensor, actual) -> float | None:
    """Largest difference relative to the largest finite magnitude; inf where the NaNs or infinities are not
    where the Program has them, or a mask or an index differs; None where the two cannot be compared. A module
    may return its one tensor in a tuple or an output class (a Hugging Face layer's `(hidden_states,)`)."""
    tensors = leaves(actual)
    actual = tensors[0] if len(tensors) == 1 else actual
    if not isinstance(actual, torch.Tensor) or actual.shape != expected.shape or actual.dtype != expected.dtype:
        return None
    if not expected.numel():
        return 0.0
    if torch.equal(expected, actual):  # the common case: the same operators on the same tensors, bit for bit
        return 0.0
    if not expected.is_floating_point():
        return float("inf")
    expected, actual = expected.float(), actual.float()
    finite = expected.isfinite()
    if not (torch.equal(finite, actual.isfinite()) and torch.equal(expected.isnan(), actual.isnan())
            and torch.equal(expected[expected.isinf()], actual[actual.isinf()])):
        return float("inf")
    if not finite.any():
        return 0.0
    scale = expected[finite].abs().max().item() or 1.0
    return (expected[finite] - actual[finite]).abs().max().item() / scale


@contextmanager
def watched(module: nn.Module, values: dict[str, torch.Tensor], tolerance: float) -> Iterator[Differences]:
    """Hooks comparing, as each call ends, the output of every module in `values` with its value there."""
    differences = Differences(tolerance)

    def hook_for(path: str):
        return lambda _module, _args, output: differences.compare(path, values[path], output)

    handles = [module.get_submodule(path).register_forward_hook(hook_for(path)) for path in values]
    try:
        yield differences
    finally:
        for handle in handles:
            handle.remove()


def agreeing(dense: Program, module: nn.Module, tolerance: float) -> set[str]:
    """The modules of `module` (the user's dense model, before any tensor of the Program goes in) that return
    their dense capture's value where their call ends: those the proof compares (module docstring)."""
    ends = module_ends(dense, module)
    with torch.no_grad(), dense.evaluating():
        _, values = program_values(dense, dense.example_inputs, ends)
    with torch.no_grad(), watched(module, values, tolerance) as differences:
        try:
            module(*dense.example_inputs)
        except Exception:  # the user's code, with its own errors: the proof names them
            return set()
    return differences.agreeing()
