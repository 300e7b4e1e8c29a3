"""The one-shot damage proxy of the budget search: how far a candidate's outputs moved from the dense
model's on the calibration batches (mean KL of the softmaxes along dim 1), before any recovery.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torch.utils._pytree as pytree

from prunefx.graph import Program
from prunefx.graph.input_batches import as_program_inputs
from prunefx.graph.placement import module_device


def model_outputs(program: Program, batches: list) -> list[torch.Tensor]:
    """Every floating output of at least two dims (batch, classes, ...), batch after batch."""
    device = module_device(program.module)  # batches as given may sit elsewhere (a loader's, on the CPU)
    with torch.no_grad(), program.evaluating():
        return [t for batch in batches for t in pytree.tree_leaves(program.module(*as_program_inputs(batch, program.example_inputs, device)))
                if isinstance(t, torch.Tensor) and t.dim() >= 2 and t.is_floating_point()]


def kl_damage(reference: list[torch.Tensor], outputs: list[torch.Tensor]) -> float:
    """Mean KL(softmax(reference) || softmax(output)) along dim 1 (classes; per pixel for dense outputs):
    how far a candidate's predictions moved from the dense model's, before any recovery."""
    total, items = 0.0, 0
    for expected, got in zip(reference, outputs, strict=True):
        kl = F.kl_div(F.log_softmax(got.double(), dim=1), F.log_softmax(expected.double(), dim=1),
                      log_target=True, reduction="none").sum(dim=1)
        total, items = total + float(kl.sum()), items + kl.numel()
    return total / max(items, 1)
