"""Capture a torch model as a Program through torch.export (non-strict).

Failures are turned into a CaptureError that names the model, the operator or Python construct
that stopped export when torch says which, and the usual fix. Either way the user's model is left as it
was found (graph/model_state.py) and torch's own dump of a failed export stays off stderr (torch_quiet.py).
"""

from __future__ import annotations

import copy
import logging
import re

import torch
from torch.nn.modules.lazy import LazyModuleMixin

from prunefx.graph.data_dependent import check_static_shapes
from prunefx.graph.errors import CaptureError, first_line, printable
from prunefx.graph.mode_caches import drop_mode_caches
from prunefx.graph.model_state import left_as_found, random_state_kept
from prunefx.graph.module_paths import name_sliced_modules
from prunefx.graph.output_tree import use_builtin_outputs
from prunefx.graph.program import Program
from prunefx.graph.program_metadata import program_name
from prunefx.graph.safety.functional_ops import clone_written_inputs
from prunefx.graph.scoped_calls import scope_of
from prunefx.graph.stack_traces import stack_traces_off, without_stack_traces
from prunefx.graph.torch_quiet import torch_quiet
from prunefx.graph.training_flags import training_nodes

_OPERATOR_PATTERNS = (
    re.compile(r"(aten\.[\w.]+)"),
    re.compile(r"(torch\.ops\.[\w.]+)"),
    re.compile(r"operator[: ]+`?([\w.:]+)`?", re.IGNORECASE),
)


def _blamed_operator(message: str) -> str | None:
    for pattern in _OPERATOR_PATTERNS:
        found = pattern.search(message)
        if found:
            return found.group(1)
    return None


def _capture_error(name: str, error: Exception) -> CaptureError:
    operator = _blamed_operator(str(error))
    where = f" at operator {operator}" if operator else ""
    # a branch on tensor values is most often post-processing (a detector's box selection): the part before it exports
    part = (" Or prune the part before it (a detector's backbone and neck): prunefx.prune_part(model, inputs, "
            "pipeline, part=...) or `prunefx prune --part auto`." if "data-dependent" in str(error) else "")
    return CaptureError(
        f"could not capture model '{name}'{where}: {first_line(error)}. "
        "Fix: make the failing code traceable (no data-dependent Python control flow, no .item()/.tolist() "
        f"on tensors), or wrap it in a custom operator (torch.library.custom_op).{part}"
    )


def _as_tuple(example_inputs) -> tuple[torch.Tensor, ...]:
    inputs = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
    if not inputs or not all(isinstance(x, torch.Tensor) for x in inputs):
        raise CaptureError("example inputs must be a tensor or a non-empty tuple of tensors")
    for x in inputs:  # a batch of 0 captures, then every pass that averages over it divides by zero
        if x.numel() == 0:
            raise CaptureError(f"an example input of shape {'x'.join(map(str, x.shape))} holds no elements: give "
                               "inputs with every dimension at least 1")
    return inputs


def _check_runs_eagerly(model: torch.nn.Module, inputs: tuple[torch.Tensor, ...], name: str) -> None:
    """A model that fails in plain PyTorch has a wrong input, not an export problem: say so.
    Batch norms in training mode, attributes the forward sets, the user's hooks and the inputs (a first
    in-place ReLU writes into them) are left as found."""
    try:
        with torch.no_grad(), left_as_found(model), random_state_kept([*model.parameters(), *model.buffers(), *inputs]):
            model(*(x.clone() for x in inputs))
    except Exception as error:
        shapes = ", ".join("x".join(map(str, x.shape)) for x in inputs)
        raise CaptureError(f"model '{name}' does not run on input shape {shapes}: {first_line(error)}") from error


def _check_initialised(model: torch.nn.Module, name: str) -> None:
    """Lazy modules (LazyLinear, LazyConv2d) make their weights on the first call: the check for a model that does
    not run eagerly would be that call, and would turn the user's LazyLinear into a Linear behind their back."""
    for path, module in model.named_modules():
        if isinstance(module, LazyModuleMixin) and module.has_uninitialized_params():
            raise CaptureError(f"model '{name}': {path or 'the model'} ({type(module).__name__}) has not made its "
                               "weights yet: call the model once on an input before capturing it")


def _check_has_values(model: torch.nn.Module, inputs: tuple, name: str) -> None:
    """Tensors on the meta device have shapes and no values: a Program of them captures, then fails inside torch
    when anything reads a weight (saving, scoring, exporting)."""
    where = next((path for path, tensor in [*model.named_parameters(), *model.named_buffers()] if tensor.is_meta),
                 None)
    if where is not None:
        raise CaptureError(f"model '{name}': {where} is on the meta device (a shape with no values): load the weights "
                           "first (model.to_empty(device='cpu'), then load_state_dict)")
    if any(isinstance(x, torch.Tensor) and x.is_meta for x in inputs):
        raise CaptureError(f"model '{name}': the example inputs are on the meta device: give tensors with values")


def _check_not_a_library_wrapper(model: torch.nn.Module, name: str) -> None:
    """Ultralytics' YOLO/RTDETR wrapper runs its whole predict pipeline when called (printing, and adding its
    callbacks to the wrapper): refused before anything runs it, naming the network to pass instead."""
    if any(f"{cls.__module__}.{cls.__qualname__}" == "ultralytics.engine.model.Model" for cls in type(model).__mro__):
        raise CaptureError(f"model '{name}' is Ultralytics' {type(model).__name__} wrapper: capture its network, "
                           f"after prunefx.models.prepare_ultralytics({type(model).__name__}(...).model)")


_log = logging.getLogger(__name__)
_SAID: set[tuple[str, int]] = set()  # (model name, operators) whose training-in-eval was said


def capture(model: torch.nn.Module | torch.export.ExportedProgram, example_inputs=None, *,
            name: str | None = None, copy_weights: bool = True) -> Program:
    """Export `model` on `example_inputs` (a tensor or tuple of tensors) and wrap it as a Program.

    `model` may also be an ExportedProgram the user made with torch.export.export: its own example
    inputs are used unless others are given, and its graph is re-exported statically at them (a
    Program has fixed shapes). Either way the weights are copied: neither the user's model nor their
    ExportedProgram changes when the Program is rewritten or trained.
    The model is captured in its current training mode; call `program.eval()` afterwards to switch.
    The model is left as found, on success and on refusal: attributes and buffers its forward writes are
    put back, and its forward hooks run as in a call of the model, what they keep put back afterwards
    (graph/model_state.py).
    `copy_weights=False` is for a caller that drops `model` afterwards (a model built from a name on the command
    line): the Program then takes the model's (or the ExportedProgram's) own tensors, without a second copy of every weight, and rewriting
    or training it would change the model too.
    """
    if name and program_name(name) is None:  # refused before any work, as the Program would (None, "": the default)
        raise CaptureError(f"capture's name must be non-empty text, not {printable(repr(name))[:60]}")
    if not isinstance(copy_weights, bool):
        raise CaptureError(f"capture's copy_weights is True or False, not {printable(repr(copy_weights))[:60]}")
    if isinstance(model, torch.export.ExportedProgram):
        return _capture_exported(model, example_inputs, name=name or "exported", copy_weights=copy_weights)
    if not isinstance(model, torch.nn.Module):
        raise CaptureError(f"capture takes a torch.nn.Module or a torch.export.ExportedProgram, not "
                           f"{type(model).__name__}")
    if example_inputs is None:
        raise CaptureError("capture needs example inputs for a torch.nn.Module (a tensor or a tuple of tensors)")
    name = name or type(model).__name__
    inputs = _as_tuple(example_inputs)
    _check_initialised(model, name)
    _check_has_values(model, inputs, name)
    _check_not_a_library_wrapper(model, name)
    try:
        with stack_traces_off():
            exported = _export(model, inputs)
    except Exception as error:  # torch raises many unrelated types here; all mean "cannot export"
        _check_runs_eagerly(model, inputs, name)
        raise _capture_error(name, error) from error
    try:
        check_static_shapes(exported.graph, name)  # .item(), nonzero, NMS: refused here, with the module to blame
    except CaptureError:
        check_static_shapes(_export(model, inputs).graph, name)  # again with stack traces: the user's line
        raise
    exported = without_stack_traces(exported)
    # exported.module() shares parameter and buffer storage with `model`; copy it so that training or
    # rewriting the Program never changes the user's model behind their back.
    # the inputs too: the caller reusing the tensor (a loader's buffer) must not change what checks run on
    program = Program.from_exported(exported, tuple(x.detach().clone() for x in inputs), name=name)
    if clone_written_inputs(program.graph):  # the caller's tensors are theirs: the graph writes into a copy
        program.module.recompile()
    name_sliced_modules(program.graph, model)
    if not model.training:
        _say_training_in_eval(program, name)
    if copy_weights:
        program.module = copy.deepcopy(program.module)
    use_builtin_outputs(program.module)  # a saved Program must never need the model's library to be read
    return program


def _export(model: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> torch.export.ExportedProgram:
    with torch_quiet(), left_as_found(model), random_state_kept([*model.parameters(), *inputs]):
        drop_mode_caches(model)  # the graph reads the weights, not what an earlier eval-mode call stored of them
        return torch.export.export(model, inputs, strict=False)


def _say_training_in_eval(program: Program, name: str) -> None:
    """A model in eval mode whose code still drops out (F.dropout(..., training=True), fused attention's dropout_p
    passed whatever the mode) is random in eval. Its flags are the graph's training mode, which the Program's
    eval() turns off: said once, since the model the Program delivers then computes without them."""
    found = training_nodes(program.graph)
    if not found or (name, len(found)) in _SAID:
        return
    _SAID.add((name, len(found)))  # a model captured again (a write-back's dense copy) is not said twice
    where = sorted({scope_of(node) or "the model" for node in found})
    operators = sorted({str(getattr(node.target, "_overloadpacket", node.target)) for node in found})
    _log.warning("%s: %d operator(s) keep their training behaviour in eval mode (%s, in %s): prunefx takes them for "
                 "the training mode's, and the Program's eval() turns them off", name, len(found),
                 ", ".join(operators), ", ".join(where[:3]) + (f" and {len(where) - 3} more" if len(where) > 3 else ""))


def _capture_exported(exported: torch.export.ExportedProgram, example_inputs, *, name: str,
                      copy_weights: bool) -> Program:
    if example_inputs is None:
        stored = exported.example_inputs
        if stored is None:
            raise CaptureError(f"the ExportedProgram '{name}' carries no example inputs: pass them to capture")
        args, kwargs = stored
        if kwargs:
            raise CaptureError(f"the ExportedProgram '{name}' takes keyword inputs ({', '.join(kwargs)}); "
                               "prunefx captures positional tensor inputs only")
        example_inputs = args
    dynamic = _dynamic_input_sizes(exported)
    if dynamic:  # documented, and said: the user's Dims are not kept, in the Program nor in any file made from it
        _log.warning("%s: the ExportedProgram's dynamic input sizes (%s) are captured at the example inputs' %s; "
                     "a Program has fixed shapes, and so have its files and to_exported()", name, ", ".join(dynamic),
                     " and ".join("x".join(map(str, x.shape)) for x in _as_tuple(example_inputs)))
    return capture(exported.module(), example_inputs, name=name, copy_weights=copy_weights)


def _dynamic_input_sizes(exported: torch.export.ExportedProgram) -> list[str]:
    """'input 0 dim 0: s77' for every symbolic size of the user's inputs."""
    user_inputs = set(exported.graph_signature.user_inputs)
    placeholders = [node for node in exported.graph.nodes if node.op == "placeholder" and node.name in user_inputs]
    return [f"input {index} dim {dim}: {size}" for index, node in enumerate(placeholders)
            for dim, size in enumerate(getattr(node.meta.get("val"), "shape", ())) if not isinstance(size, int)]
