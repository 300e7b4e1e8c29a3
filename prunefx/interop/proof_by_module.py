"""The write-back's proof, module by module: each module of the user's code returns, on the proof's inputs, the
value the pruned Program computes where that module's call ends.

The outputs alone can hide a wrong module: an error made inside a block shrinks on its way to the output once
the residual stream adds to it (an attention on random weights, near uniform, with its queries scaled twice:
7e-3 at the attention, 4e-6 at the output, under the outputs' tolerance). A module compared is one of the
user's code (torch's own layers compute what their tensors say), reached by one name, each of whose calls
(a block shared by a loop: every call, in turn) gives the rest of the graph one value of its operators, and
returns one tensor of that value's shape (alone, or the only one in a tuple or an output class); and, so that no
pattern of the user's code (a call whose result is dropped, a value kept in an attribute) is taken for an
error, one whose dense original returns its dense capture's value there at every call (`agreeing`). An
attention whose queries hold its dense scale (attention_scale.py) rounds otherwise, and its query parts differ by
design: skipped with what is inside it.
"""

from __future__ import annotations

import itertools
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


def module_ends(program: Program, module: nn.Module, among: set[str] | None = None
                ) -> dict[tuple[str, int], ModuleEnd]:
    """Where each call of each comparable module ends in the Program (module docstring), by module path and the
    call's number (0 for the first: torch.export numbers a module's later calls `@1`, `@2`, ...); with `among`,
    only those paths. A module with a call that cannot be compared has none compared."""
    members: dict[tuple[str, int], list[fx.Node]] = {}
    for node in program.graph.nodes:
        if node.op != "call_function":
            continue
        for key, (path, _) in (node.meta.get("nn_module_stack") or {}).items():
            if isinstance(path, str):
                members.setdefault((path, _call_number(key)), []).append(node)
    calls: dict[str, dict[int, ModuleEnd | None]] = {}
    for (path, call), nodes in members.items():
        calls.setdefault(path, {})[call] = _end(nodes)
    wanted = [path for path in _own_code(module) if among is None or path in among]
    return {(path, call): end for path in wanted if path in calls and None not in calls[path].values()
            for call, end in calls[path].items() if end is not None}


def _call_number(key: str) -> int:
    """Which call of its module an nn_module_stack key names: `L__self___blocks_0@2` the third."""
    _, at, number = key.rpartition("@")
    return int(number) if at and number.isdigit() else 0


def _end(nodes: list[fx.Node]) -> ModuleEnd | None:
    """A call's end: the one of its operators whose tensor the rest of the graph reads (None where not one)."""
    inside = set(nodes)
    leaving = [node for node in nodes if any(user not in inside for user in node.users)]
    if len(leaving) == 1 and isinstance(leaving[0].meta.get("val"), torch.Tensor):
        return ModuleEnd(leaving[0], nodes[-1])
    return None


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


def program_values(program: Program, inputs: tuple, ends: dict[tuple[str, int], ModuleEnd]
                   ) -> tuple[object, dict[tuple[str, int], torch.Tensor]]:
    """The Program's outputs on `inputs`, and each module call's value as its last operator leaves it, by
    (path, call)."""
    values: dict[tuple[str, int], torch.Tensor] = {}
    held: dict[fx.Node, torch.Tensor] = {}  # a value the interpreter may free before the module's call ends
    pending: dict[fx.Node, int] = {}  # how many module calls still wait for each held value
    closing: dict[fx.Node, list[tuple[str, int]]] = {}
    for call, end in ends.items():
        closing.setdefault(end.last, []).append(call)
        pending[end.value] = pending.get(end.value, 0) + 1

    class Keeping(fx.Interpreter):
        def run_node(self, node):
            value = super().run_node(node)
            if node in pending:
                held[node] = value
            copies: dict[fx.Node, torch.Tensor] = {}
            for call in closing.get(node, ()):
                end = ends[call].value
                if end not in copies:  # later operators may write into it in place
                    copies[end] = held[end].clone()
                values[call] = copies[end]
                pending[end] -= 1
                if not pending[end]:
                    del held[end]
            return value

    return Keeping(program.module).run(*inputs), values


def leaves(outputs) -> list[torch.Tensor]:
    """The tensors in a module's or a Program's outputs (a tuple, a dict, an output class), in order."""
    return [leaf for leaf in pytree.tree_leaves(outputs) if isinstance(leaf, torch.Tensor)]


class Differences:
    """While open (`watched`), each module's calls compared in turn with the Program's values where they end
    (relative to that value's largest finite magnitude); a module is judged when it was called as often as the
    Program calls it and every call could be compared. `first`: the first module judged, in the order calls end
    (the innermost first), that differs by more than `tolerance` at a call, with its largest error."""

    def __init__(self, tolerance: float, calls: dict[str, int]):
        self.tolerance, self.calls = tolerance, calls  # calls: path -> how many the Program makes
        self.errors: dict[str, list[float | None]] = {}  # by path, an error per call (None: not comparable)

    def compare(self, path: str, expected: torch.Tensor | None, actual) -> None:
        self.errors.setdefault(path, []).append(None if expected is None else _error(expected, actual))

    def _judged(self) -> Iterator[tuple[str, float]]:
        for path, errors in self.errors.items():  # in the order the first calls ended
            found = [error for error in errors if error is not None]
            if len(found) == len(errors) == self.calls.get(path):
                yield path, max(found)

    @property
    def first(self) -> tuple[str, float] | None:
        return next(((path, error) for path, error in self._judged() if error > self.tolerance), None)

    def agreeing(self) -> set[str]:
        """The paths whose every call returned the Program's value."""
        return {path for path, error in self._judged() if error <= self.tolerance}


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
def watched(module: nn.Module, values: dict[tuple[str, int], torch.Tensor], tolerance: float
            ) -> Iterator[Differences]:
    """Hooks comparing, as each call ends, the output of every module in `values` with its value there (its
    n-th call with the Program's n-th)."""
    calls: dict[str, int] = {}
    for path, _ in values:
        calls[path] = calls.get(path, 0) + 1
    differences = Differences(tolerance, calls)

    def hook_for(path: str):
        made = itertools.count()  # this module's calls so far
        return lambda _module, _args, output: differences.compare(path, values.get((path, next(made))), output)

    handles = [module.get_submodule(path).register_forward_hook(hook_for(path)) for path in calls]
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
            module(*(x.clone() for x in dense.example_inputs))  # the user's code may write into its input
        except Exception:  # the user's code, with its own errors: the proof names them
            return set()
    return differences.agreeing()
