"""Where a Trainer keeps the program it trains, and how programs go back to their caller.

The trained program sits in train mode on the training device with its example inputs (a pass run between
steps checks it on them), tapped for the feature losses (a copy of its graph, which under bf16 asserts no
dtype: precision.py) and, across processes, wrapped in DDP. A program
given back returns to the device and the training modes the caller's program had.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from prunefx.graph import Program
from prunefx.graph.placement import module_device, move_program
from prunefx.passes.training.losses import tap_outputs
from prunefx.passes.training.precision import FP32, without_dtype_assertions


class Placement:
    """Places the programs of one Trainer: `given` is the caller's program, whose device and modes every
    program given back takes."""

    def __init__(self, given: Program, device: torch.device, world_size: int, tapped: Sequence[str],
                 precision: str = FP32):
        self.given, self.device, self.world_size, self.tapped = given, device, world_size, list(tapped)
        self.precision = precision
        self.home_device = module_device(given.module)
        self.initial_modes = given.modes()

    def place(self, program: Program) -> tuple[torch.fx.GraphModule, torch.nn.Module]:
        """Put `program` on the device in train mode; its tapped module and the module to call (DDP's wrap
        of it across processes). Tap afresh after every move: a move to another device gives the program new
        buffer objects, which an older tap would not see (batch-norm statistics and blend weights would then
        go to orphans)."""
        program.train()
        move_program(program, self.device)  # with the devices its graph names (aten.arange(device=...))
        student = tap_outputs(program.module, self.tapped)
        if self.precision != FP32:  # the tapped copy is the trainer's own: its casts meet autocast's dtypes
            without_dtype_assertions(student)
        if self.world_size == 1:
            return student, student
        ids = [self.device.index] if self.device.type == "cuda" else None
        return student, torch.nn.parallel.DistributedDataParallel(student, device_ids=ids)

    def send_home(self, program: Program) -> None:
        """Give `program` back in the caller's modes (a program since replaced: its overall mode) on the
        caller's device."""
        program.restore_modes(self.initial_modes)
        move_program(program, self.home_device)
