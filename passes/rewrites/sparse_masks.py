"""Masked recovery: the zeros of sparse weights stay exactly zero while a Program is fine-tuned.

A `SparseMasks` object, registered on the Trainer, takes the zero pattern of the weights sparsify_nm recorded
(`program.analysis.sparsity.weights`) and writes the zeros back after every optimizer step, which holds for any
optimizer (momentum and weight decay act after the gradients). distill does this by itself. When the masks
are taken and the non-goals: see docs/algorithms.md, 'Zeros kept during recovery'.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from prunefx.graph import Program
from prunefx.graph.attributes import get_tensor
from prunefx.graph.errors import PrunefxError


def recorded_weights(program: Program) -> list[str]:
    """The weights a sparsify pass recorded as sparse in the Program's analysis ([] when none)."""
    return program.analysis.sparse_weights


def refuse_sparse_weights(program: Program, owner: str, how: str) -> None:
    """Refuse, before any work, a pass that rewrites weights `how` (slicing input channels, multiplying kernels
    together) on a Program sparsify_nm made N:M sparse: the zeros would move off the pattern that the Program
    still records, and a sparse deployment would find dense weights."""
    record = program.analysis.sparsity
    if record is not None and record.weights:
        raise PrunefxError(f"{owner}: {len(record.weights)} weights of '{program.name}' are {record.pattern} sparse "
                           f"(sparsify_nm, e.g. {record.weights[0]}), and {how} would break that pattern: run "
                           f"sparsify_nm after {owner}")


class SparseMasks:
    """Trainer hooks that keep the zeros of `weights` (default: those the Program records) at zero."""

    def __init__(self, program: Program | None = None, *, weights: Iterable[str] | None = None):
        self._names = None if weights is None else list(weights)
        self._program: Program | None = None
        self.masks: dict[str, torch.Tensor] = {}
        if program is not None:
            self.derive(program)

    def derive(self, program: Program) -> None:
        """Take the masks (True = kept) from the current zero pattern of the program's sparse weights."""
        names = recorded_weights(program) if self._names is None else self._names
        module = program.module
        self.masks = {name: get_tensor(module, name).detach() != 0 for name in names if _has_tensor(module, name)}
        self._program = program

    def after_backward(self, trainer) -> None:
        if trainer.program is not self._program:
            self.derive(trainer.program)

    def after_step(self, trainer, step: int) -> None:
        if trainer.program is not self._program:  # replaced without an after_backward in between
            self.derive(trainer.program)
        self.apply(trainer.program)

    __call__ = after_step  # usable directly as an after_step hook

    @torch.no_grad()
    def apply(self, program: Program) -> None:
        """Zero the masked entries. Nothing is read back to the host: on a GPU that would wait for every step."""
        for name, keep in self.masks.items():
            weight = get_tensor(program.module, name)
            if weight.shape != keep.shape:  # sliced since the masks were taken: take them again next time
                self._program = None
                continue
            if keep.device != weight.device:  # moved once, not copied to the weight's device every step
                keep = self.masks[name] = keep.to(weight.device)
            weight.masked_fill_(~keep, 0.0)


def _has_tensor(module: torch.nn.Module, name: str) -> bool:
    try:
        get_tensor(module, name)
    except AttributeError:
        return False
    return True
