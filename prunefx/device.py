"""The device prunefx's calibrated work runs on: channel importance, the second-order (OBS) math and
compensation, calibration passes (batch-norm statistics, Hessians) and recovery training.

    device = resolve_device("auto")          # cuda when torch sees a GPU, else cpu; "cuda" without one: refused
    with on_device(program, device) as placed:
        result = Pipeline(steps).run(program)   # every pass sees the module on `device`
        pruned = placed.home(result.program)    # brought back before anything is written

`on_device` moves the Program (its tensors, the devices its graph names, its example inputs:
graph/placement.py) to the device, and back to where it was when the block ends, also when a pass raised; a
cuda:N is torch's current device inside, so that what measures there times the same GPU.
Programs made inside the block (a Pipeline works on a copy) are brought back with `placed.home`. Calibration batches
go along with `batches_on`: some readers run the module on the batches as they are given.
Files are always written from the CPU: a model.pt2 or ONNX file must not depend on the GPU that made it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
import torch.utils._pytree as pytree

from prunefx.graph import Program
from prunefx.graph.full_float32 import full_float32
from prunefx.graph.model_state import random_state_kept
from prunefx.graph.placement import DEVICE_CHOICES, device_named, module_device, move_program

__all__ = ["DEVICE_CHOICES", "Placement", "batches_on", "on_device", "resolve_device"]


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """"auto" (or None): cuda when available, else cpu; "cpu"; "cuda" or "cuda:N" (a PrunefxError, one line,
    when torch sees no such GPU). The training engine resolves its `device` option with the same function."""
    return device_named(name)


@dataclass(frozen=True)
class Placement:
    """Where `on_device` put a Program (`device`) and where it came from (`origin`)."""

    device: torch.device
    origin: torch.device

    def home(self, program: Program) -> Program:
        """`program` (made inside the block, e.g. by a Pipeline) moved to the origin, and returned."""
        return move_program(program, self.origin)


@contextlib.contextmanager
def on_device(program: Program, device: str | torch.device | None) -> Iterator[Placement]:
    """`program` on `device` inside the block (None: where it is), back where it was after it, also when the
    block raised (see the module docstring)."""
    origin = module_device(program.module)
    placement = Placement(origin if device is None else resolve_device(device), origin)
    try:  # a move cut short (out of GPU memory, Ctrl-C) leaves some tensors moved: they go back too
        move_program(program, placement.device)
        with full_float32(), current_gpu(placement.device):
            yield placement
    finally:
        move_program(program, origin)


def current_gpu(device: torch.device | None) -> contextlib.AbstractContextManager:
    """cuda:N as torch's current device inside the block: what measures there (the cuda backend, TensorRT, a
    latency table) works on "cuda", the current device, and would time another GPU than the passes run on."""
    if device is not None and device.type == "cuda" and device.index is not None and torch.cuda.is_available():
        return torch.cuda.device(device.index)
    return contextlib.nullcontext()


def batches_on(batches: Iterable | None, device: str | torch.device) -> list | None:
    """Calibration batches (tensors, tuples of tensors, or (inputs, labels) pairs) with every tensor on
    `device`; None stays None. torch's generator as found afterwards: a DataLoader draws its workers' base seed
    from it on every iter()."""
    if batches is None:
        return None
    target = torch.device(device)
    with random_state_kept(()):
        return [pytree.tree_map_only(torch.Tensor, lambda tensor: tensor.to(target), batch) for batch in batches]
