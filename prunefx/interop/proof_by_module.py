"""The write-back's proof, module by module: each module of the user's code returns, on the proof's inputs, the
value the pruned Program computes where that module's call ends.

The outputs alone can hide a wrong module: an error made inside a block shrinks on its way to the output once
the residual stream adds to it (an attention on random weights, near uniform, with its queries scaled twice:
7e-3 at the attention, 4e-6 at the output, under the outputs' tolerance). A module compared is one of the
user's code (torch's own layers compute what their tensors say), called once, whose operators in the Program
give one value to the rest of the graph, and that returns one tensor of that value's shape. Inside an
attention whose queries hold its dense scale (attention_scale.py) the query parts differ by design: skipped.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import fx, nn

from prunefx.graph import Program


@dataclass(frozen=True)
class ModuleEnd:
    value: fx.Node  # the one node of the module's operators that the rest of the graph reads
    last: fx.Node   # its last operator: an in-place one (ReLU(inplace=True)) may still write into `value`


def module_ends(program: Program, module: nn.Module) -> dict[str, ModuleEnd]:
    """Where each comparable module's call ends in the Program (module docstring), by module path."""
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
        if len(calls.get(path, ())) != 1:
            continue
        inside = set(members[path])
        leaving = [node for node in members[path] if any(user not in inside for user in node.users)]
        if len(leaving) == 1 and isinstance(leaving[0].meta.get("val"), torch.Tensor):
            ends[path] = ModuleEnd(leaving[0], members[path][-1])
    return ends


def _own_code(module: nn.Module) -> list[str]:
    """Modules of the user's (or a library's) code, reached by one name only, outside attentions whose query
    parts hold a folded scale."""
    names: dict[int, int] = {}
    for _, each in module.named_modules(remove_duplicate=False):
        names[id(each)] = names.get(id(each), 0) + 1
    folded = [f"{path}." for path, each in module.named_modules() if vars(each).get("_prunefx_scale_folded")]
    return [path for path, each in module.named_modules()
            if path and not type(each).__module__.startswith("torch.") and names[id(each)] == 1
            and not any(path.startswith(prefix) for prefix in folded)]


def program_values(program: Program, inputs: tuple, ends: dict[str, ModuleEnd]
                   ) -> tuple[object, dict[str, torch.Tensor]]:
    """The Program's outputs on `inputs`, and each module's value as its last operator leaves it, by path."""
    values: dict[str, torch.Tensor] = {}
    held: dict[fx.Node, torch.Tensor] = {}  # a value the interpreter may free before the module's call ends
    wanted = {end.value for end in ends.values()}
    closing: dict[fx.Node, list[str]] = {}
    for path, end in ends.items():
        closing.setdefault(end.last, []).append(path)

    class Keeping(fx.Interpreter):
        def run_node(self, node):
            value = super().run_node(node)
            if node in wanted:
                held[node] = value
            for path in closing.get(node, ()):
                values[path] = held[ends[path].value].clone()  # later operators may write into it in place
            return value

    return Keeping(program.module).run(*inputs), values


class Differences:
    """While open (`watched`), the first module (in the order calls end: the innermost first) whose output
    differs from the Program's value by more than `tolerance` relative to that value's largest magnitude."""

    def __init__(self, tolerance: float):
        self.tolerance = tolerance
        self.first: tuple[str, float] | None = None

    def compare(self, path: str, expected: torch.Tensor, actual) -> None:
        if self.first is not None or not isinstance(actual, torch.Tensor) or actual.shape != expected.shape:
            return
        if not expected.numel():
            return
        scale = expected.abs().max().item() or 1.0
        error = (expected.float() - actual.float()).abs().max().item() / scale
        if error > self.tolerance:
            self.first = (path, error)


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
