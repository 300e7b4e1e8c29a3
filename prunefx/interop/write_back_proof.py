"""The write-back's proof: the written-back module computes what the pruned Program computes.

Its eager outputs equal the Program's (1e-5 relative to the largest output) on the example inputs and on a
second random input, and so does what each module of the user's code returns (proof_by_module.py); a fresh
capture of it has the Program's widths; a module made from a subgraph (prunefx/interop/subgraph_module.py)
also on a batch of both inputs, since its graph holds literal sizes. Where the proof fails, one WriteBackError
names the module that raised or differs, or the first operator that differs.
"""

from __future__ import annotations

import copy
import traceback

import torch
from torch import nn

from prunefx.graph import Program, capture
from prunefx.graph.errors import PrunefxError, first_line
from prunefx.graph.scoped_calls import first_difference
from prunefx.interop.proof_by_module import leaves, module_ends, program_values, watched

TOLERANCE = 1e-5  # relative to the largest output magnitude

class WriteBackError(PrunefxError):
    """The pruned Program could not be proven equal to a copy of the user's module."""


def program_tensors(program: Program) -> dict[str, torch.Tensor]:
    used = {node.target for node in program.graph.nodes if node.op == "get_attr"}
    tensors = dict(program.module.named_parameters(remove_duplicate=False))
    tensors.update(program.module.named_buffers(remove_duplicate=False))
    for target in used - tensors.keys():  # constants that are neither parameters nor buffers
        owner_path, _, attribute = target.rpartition(".")
        value = getattr(program.module.get_submodule(owner_path), attribute)
        if isinstance(value, torch.Tensor):
            tensors[target] = value
    return tensors


def _second_input(inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(1)
    return tuple(torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device) if x.is_floating_point()
                 else x for x in inputs)


def verify_module(program: Program, module: nn.Module, name: str, hint: str, among: set[str] | None = None) -> None:
    """Same outputs as the Program on two inputs, and a capture with the Program's widths (module docstring);
    the modules compared one by one: those of `among` (proof_by_module.agreeing), or every one."""
    ends = module_ends(program, module, among)
    for inputs in (program.example_inputs, _second_input(program.example_inputs)):
        with torch.no_grad(), program.evaluating():
            outputs, values = program_values(program, inputs, ends)
        expected = leaves(outputs)
        with watched(module, values, TOLERANCE) as differences:
            actual = _run(module, inputs, name, hint)
        del values  # the next input's are made while these would still be held
        error, first = _relative_error(expected, actual), differences.first
        if error is None or error > TOLERANCE:
            differs = "returns other outputs" if error is None else f"differs by {error:.2g} relative"
            failed = WriteBackError(f"cannot write {name} back: the module {differs} from the pruned program"
                                    f"{_where(program, module, name) or hint}")
            failed.module_path = first[0] if first else None
            raise failed
        if first:
            raise _module_differs(module, name, *first)
    _check_widths(program, module, name)


def _module_differs(module: nn.Module, name: str, path: str, error: float) -> WriteBackError:
    """The outputs agree, and a module inside does not: its error shrank on the way (proof_by_module.py)."""
    failed = WriteBackError(f"cannot write {name} back: module '{path}' ({type(module.get_submodule(path)).__name__}) "
                            f"returns values {error:.2g} relative from the pruned program's where its call ends "
                            "(the outputs agree within the tolerance)")
    failed.module_path = path  # a subgraph may stand in for it
    return failed


def _run(module: nn.Module, inputs, name: str, hint: str) -> list[torch.Tensor]:
    try:
        with torch.no_grad():  # on copies: the user's code may write into its input (ReLU(inplace=True))
            return leaves(module(*(x.clone() for x in inputs)))
    except Exception as error:  # the user's forward may raise anything; name the module that did
        failed = WriteBackError(f"cannot write {name} back: {_failing_module(error, module)}"
                                f"{first_line(error)}{hint}")
        failed.module_path = _own_failing_path(error, module)
        raise failed from error


def _own_failing_path(error: Exception, module: nn.Module) -> str | None:
    """The innermost module outside torch's own that raised `error` (of the user's code, or a subgraph standing in
    for one): its subgraph may stand in for it, or its sizes be set back."""
    return next((path for path in reversed(_failing_paths(error, module))
                 if not type(module.get_submodule(path)).__module__.startswith("torch.")), None)


def _failing_paths(error: Exception, module: nn.Module) -> list[str]:
    """The modules of `module` whose forward the traceback passes through, outermost first."""
    names = {id(m): path for path, m in module.named_modules()}
    return [names[id(frame.f_locals.get("self"))] for frame, _ in traceback.walk_tb(error.__traceback__)
            if id(frame.f_locals.get("self")) in names]


def _failing_module(error: Exception, module: nn.Module) -> str:
    """'module NAME: ' for the innermost module of `module` whose forward the traceback passes through."""
    paths = _failing_paths(error, module)
    if not paths:
        return ""
    return f"module '{paths[-1] or '(model)'}' ({type(module.get_submodule(paths[-1])).__name__}): "


def _relative_error(expected: list[torch.Tensor], actual: list[torch.Tensor]) -> float | None:
    if len(expected) != len(actual) or any(e.shape != a.shape for e, a in zip(expected, actual)):
        return None
    scale = max((e.abs().max().item() for e in expected if e.numel()), default=0.0) or 1.0
    return max(((e - a).abs().max().item() for e, a in zip(expected, actual) if e.numel()), default=0.0) / scale


def _where(program: Program, module: nn.Module, name: str) -> str:
    """'; module X: operator Y gets ...', from a capture of the module aligned with the Program's graph."""
    try:
        recaptured = capture(copy.deepcopy(module), program.example_inputs, name=name)
    except PrunefxError as error:
        return f"; it does not capture: {error}"
    recaptured.module.graph.eliminate_dead_code()
    difference = first_difference(program.module, recaptured.module)
    return f"; {difference}" if difference else ""


def _check_widths(program: Program, module: nn.Module, name: str) -> None:
    try:
        recaptured = capture(copy.deepcopy(module), program.example_inputs, name=name)
    except PrunefxError as error:
        raise WriteBackError(f"cannot write {name} back: the written-back module does not capture ({error})") from error
    theirs = {k: tuple(v.shape) for k, v in program_tensors(recaptured).items()}
    for target, tensor in program_tensors(program).items():
        if target in theirs and theirs[target] != tuple(tensor.shape):
            raise WriteBackError(f"cannot write {name} back: captured again, '{target}' is "
                                 f"{'x'.join(map(str, theirs[target]))}, not the program's "
                                 f"{'x'.join(map(str, tensor.shape))}")


def check_batch(program: Program, module: nn.Module, name: str) -> None:
    try:
        pair = batch_outputs(program, module, [program.example_inputs, _second_input(program.example_inputs)])
    except Exception as error:  # the user's forward may raise anything; name the module that did
        failed = WriteBackError(f"cannot write {name} back: on a batch of two inputs, "
                                f"{_failing_module(error, module)}{first_line(error)}")
        failed.module_path = _own_failing_path(error, module)
        raise failed from error
    if pair is not None:
        error = _relative_error(*pair)
        if error is None or error > TOLERANCE:
            raise WriteBackError(f"cannot write {name} back: on a batch of two inputs the module differs from the "
                                 "pruned program (a subgraph holds the example's batch size)")


def batch_first_outputs(program: Program) -> bool:
    """Whether every output of the Program has the batch first, so that a proof on a batch of two can check what
    a subgraph made of the batch (`batch_outputs`)."""
    batch = program.example_inputs[0].shape[0] if program.example_inputs and program.example_inputs[0].dim() else None
    return batch is not None and all(len(shape) and shape[0] == batch for shape in program.output_shapes)


def batch_outputs(program: Program, module: nn.Module, inputs: list[tuple[torch.Tensor, ...]]):
    """(expected, actual): the Program's outputs on each of `inputs`, concatenated along the batch, and the
    module's outputs on those inputs as one batch; None where the Program's outputs are not batch-first.
    A graph made from the Program holds its example's sizes: this shows whether they include the batch."""
    batch = inputs[0][0].shape[0]
    with torch.no_grad(), program.evaluating():
        runs = [leaves(program(*each)) for each in inputs]
    if any(tensor.dim() == 0 or tensor.shape[0] != batch for tensor in runs[0]):
        return None
    expected = [torch.cat(parts) for parts in zip(*runs)]
    joined = tuple(torch.cat(parts) for parts in zip(*inputs))
    with torch.no_grad():
        return expected, leaves(module(*joined))
