"""The recovery trainer's teacher: frozen, in eval mode on the training device, tapped for feature pairs.

The caller's teacher is never changed: one that is not yet all in eval mode on the training device is
copied first, and the copy is flipped and moved (a graph carries its mode in its batch-norm and dropout nodes,
a module in each submodule; putting either back by hand loses a frozen batch norm's mode, or the mode itself
when training is refused before it starts).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch

from prunefx.graph import Program
from prunefx.graph.input_batches import as_program_inputs
from prunefx.graph.model_state import hook_state_kept
from prunefx.graph.placement import module_device, move_module
from prunefx.graph.tensor_copies import tensor_copies
from prunefx.passes.training.config import TrainConfig, TrainingError
from prunefx.passes.training.losses import run_tapped, tap_outputs
from prunefx.passes.training.precision import FP32, without_dtype_assertions

TeacherRun = Callable[[tuple[torch.Tensor, ...]], tuple[Any, Any]]


def frozen_teacher(teacher, config: TrainConfig, device: torch.device, student: Program) -> TeacherRun:
    """The teacher in eval mode on the training device (the caller's, or a copy where it is not: see above). A
    teacher that shares weights with the `student` (the Program itself) is copied too: else it would learn along."""
    if isinstance(teacher, (Program, torch.fx.GraphModule)):
        module = teacher.module if isinstance(teacher, Program) else teacher
        _check_inputs(teacher, student)
        if isinstance(teacher, torch.fx.GraphModule) or teacher.training or module_device(module) != device \
                or _shares_weights(module, student.module):
            module = move_module(Program(copy.deepcopy(module), (), name="teacher").eval().module, device)
    elif isinstance(teacher, torch.nn.Module):
        if config.feature_pairs:
            raise TrainingError("feature_losses need a teacher captured as a Program (nodes are read by name)")
        module = teacher
        if any(submodule.training for submodule in teacher.modules()) or module_device(teacher) != device \
                or _shares_weights(teacher, student.module):
            module = move_module(copy.deepcopy(teacher).eval(), device)
    else:
        raise TrainingError(f"the teacher must be a Program or a torch.nn.Module, not {type(teacher).__name__}")
    # the batch comes in the student's precision: a teacher Program takes its own
    examples = teacher.example_inputs if isinstance(teacher, Program) else ()
    # a graph run under autocast: a copy of it, whose casts assert no dtype (precision.py)
    autocast_graph = config.precision != FP32 and isinstance(module, torch.fx.GraphModule)
    if config.feature_pairs or autocast_graph:
        tapped = tap_outputs(module, [pair.teacher for pair in config.feature_pairs])
        if autocast_graph:
            without_dtype_assertions(tapped)
        return lambda inputs: run_tapped(tapped, tapped.out_spec, as_program_inputs(inputs, examples, device))
    if isinstance(teacher, Program):
        return lambda inputs: (module(*as_program_inputs(inputs, examples, device)), ())
    # the user's module or a copy sharing the closures of its hooks: what the runs leave there is put back
    return lambda inputs: _run_keeping_hook_state(module, inputs, device)


def _shares_weights(teacher: torch.nn.Module, student: torch.nn.Module) -> bool:
    trained = {id(parameter) for parameter in student.parameters()}
    return any(id(parameter) in trained for parameter in teacher.parameters())


def _check_inputs(teacher, student: Program) -> None:
    """A Program's inputs are fixed when it is captured: one of another batch size than the student's fails in
    torch's guards on the first step, in words that do not say it is the teacher's."""
    if not isinstance(teacher, Program):
        return
    given, trained = ([tuple(x.shape) for x in p.example_inputs] for p in (teacher, student))
    if given != trained:
        raise TrainingError(f"the teacher '{teacher.name}' takes inputs of shapes {given} and the student trains on "
                            f"{trained}: capture the teacher at the training batch size, or give it as the model "
                            "itself (a torch.nn.Module takes any batch)")


def _run_keeping_hook_state(module: torch.nn.Module, inputs, device: torch.device):
    # on copies: a module may write into its input (a ReLU(inplace=True) first), and the student reads the batch next
    given = tensor_copies(as_program_inputs(inputs, (), device))
    with hook_state_kept(module):
        return module(*given), ()
