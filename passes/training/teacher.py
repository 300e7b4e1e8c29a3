"""The recovery trainer's teacher: frozen, in eval mode on the training device, tapped for feature pairs.

A teacher captured as a Program (or a bare GraphModule) is copied before its mode is flipped: a graph
carries its mode in its batch-norm and dropout nodes, and the caller's graph must stay as it was. A plain
`nn.Module` is switched to eval in place and switched back when training ends (the returned `restore`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch

from prunefx.graph import Program
from prunefx.graph.placement import move_module
from prunefx.passes.training.config import TrainConfig, TrainingError
from prunefx.passes.training.data import module_device
from prunefx.passes.training.losses import run_tapped, tap_outputs

TeacherRun = Callable[[tuple[torch.Tensor, ...]], tuple[Any, Any]]


def frozen_teacher(teacher, config: TrainConfig, device: torch.device) -> tuple[TeacherRun, Callable | None]:
    """The teacher in eval mode on the training device, and the function that undoes changes to it."""
    if isinstance(teacher, (Program, torch.fx.GraphModule)):
        module = teacher.module if isinstance(teacher, Program) else teacher
        # A graph carries its mode in its batch-norm/dropout nodes: flip a copy, never the caller's graph.
        if isinstance(teacher, torch.fx.GraphModule) or teacher.training or module_device(module) != device:
            module = move_module(Program(copy.deepcopy(module), (), name="teacher").eval().module, device)
        restore = None
    elif isinstance(teacher, torch.nn.Module):
        if config.feature_pairs:
            raise TrainingError("feature_losses need a teacher captured as a Program (nodes are read by name)")
        was_training, module = teacher.training, teacher.to(device).eval()
        restore = lambda: teacher.train(was_training)  # noqa: E731
    else:
        raise TrainingError(f"the teacher must be a Program or a torch.nn.Module, not {type(teacher).__name__}")
    if config.feature_pairs:
        tapped = tap_outputs(module, [pair.teacher for pair in config.feature_pairs])
        return (lambda inputs: run_tapped(tapped, tapped.out_spec, inputs)), restore
    return (lambda inputs: (module(*inputs), ())), restore
