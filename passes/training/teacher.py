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
from prunefx.graph.placement import move_module
from prunefx.passes.training.config import TrainConfig, TrainingError
from prunefx.passes.training.data import module_device
from prunefx.passes.training.losses import run_tapped, tap_outputs

TeacherRun = Callable[[tuple[torch.Tensor, ...]], tuple[Any, Any]]


def frozen_teacher(teacher, config: TrainConfig, device: torch.device) -> TeacherRun:
    """The teacher in eval mode on the training device (the caller's, or a copy where it is not: see above)."""
    if isinstance(teacher, (Program, torch.fx.GraphModule)):
        module = teacher.module if isinstance(teacher, Program) else teacher
        if isinstance(teacher, torch.fx.GraphModule) or teacher.training or module_device(module) != device:
            module = move_module(Program(copy.deepcopy(module), (), name="teacher").eval().module, device)
    elif isinstance(teacher, torch.nn.Module):
        if config.feature_pairs:
            raise TrainingError("feature_losses need a teacher captured as a Program (nodes are read by name)")
        module = teacher
        if any(submodule.training for submodule in teacher.modules()) or module_device(teacher) != device:
            module = move_module(copy.deepcopy(teacher).eval(), device)
    else:
        raise TrainingError(f"the teacher must be a Program or a torch.nn.Module, not {type(teacher).__name__}")
    # the batch comes in the student's precision: a teacher Program takes its own
    examples = teacher.example_inputs if isinstance(teacher, Program) else ()
    if config.feature_pairs:
        tapped = tap_outputs(module, [pair.teacher for pair in config.feature_pairs])
        return lambda inputs: run_tapped(tapped, tapped.out_spec, as_program_inputs(inputs, examples, device))
    if isinstance(teacher, Program):
        return lambda inputs: (module(*as_program_inputs(inputs, examples, device)), ())
    # the user's module or a copy sharing the closures of its hooks: what the runs leave there is put back
    return lambda inputs: _run_keeping_hook_state(module, inputs, device)


def _run_keeping_hook_state(module: torch.nn.Module, inputs, device: torch.device):
    with hook_state_kept(module):
        return module(*as_program_inputs(inputs, (), device)), ()
