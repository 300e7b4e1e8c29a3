"""Batches and evaluation of the recovery trainer (passes/training/engine.py).

Batches are `(inputs, labels)` pairs, `inputs` a tensor or a tuple of tensors; label -1 marks padding.
Under torchrun a loader with `distributed(rank, world_size)` (prunefx's StaticBatches) reads its part through
torch's DistributedSampler; any other iterable of batches gives every rank its slice of every global batch.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F

from prunefx.graph import Program
from prunefx.graph.eval_mode import evaluating
from prunefx.graph.input_batches import as_program_inputs
from prunefx.graph.placement import module_device
from prunefx.passes.training.config import TrainingError
from prunefx.passes.training.losses import IGNORE_LABEL, check_labels, in_float32, logits_of

# --- data ----------------------------------------------------------------------------------------

class _Shard:
    """This rank's slice of every global batch of a plain iterable (a loader with `distributed` does it itself)."""

    def __init__(self, data: Any, rank: int, world_size: int):  # a sized iterable (a list, a DataLoader)
        self.data, self.rank, self.world_size = data, rank, world_size

    def __len__(self) -> int:
        return len(self.data)

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.data, "set_epoch"):
            self.data.set_epoch(epoch)

    def __iter__(self):
        for inputs, labels in map(split_batch, self.data):
            yield tuple(self._slice(x) for x in inputs), self._slice(labels)

    def _slice(self, tensor: torch.Tensor) -> torch.Tensor:
        if tensor.shape[0] % self.world_size:
            raise TrainingError(f"a global batch of {tensor.shape[0]} items does not split into "
                                f"{self.world_size} equal shards")
        size = tensor.shape[0] // self.world_size
        return tensor[self.rank * size:(self.rank + 1) * size]


def shard_batches(data: Iterable, rank: int, world_size: int) -> Iterable:
    if world_size == 1:
        return data
    if getattr(data, "world_size", 1) == world_size:  # made under torch.distributed already
        return data
    if hasattr(data, "distributed"):
        return data.distributed(rank, world_size)
    return _Shard(data, rank, world_size)


def split_batch(batch) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise TrainingError(f"batches must be (inputs, labels) pairs, got {type(batch).__name__}")
    inputs, labels = batch
    inputs = (inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs)
    if isinstance(labels, torch.Tensor) and labels.dtype in _NARROW_INDICES:  # what cross-entropy takes
        labels = labels.long()
    return inputs, labels


# class indices as a numpy-made loader gives them: cross-entropy takes int64 (or uint8) only
_NARROW_INDICES = (torch.int32, torch.int16, torch.int8)


# --- evaluation ----------------------------------------------------------------------------------

@torch.no_grad()
def eval_totals(model, batches: Iterable, device: torch.device) -> torch.Tensor:
    """[correct, summed cross-entropy, labelled items] over `batches` (label -1 is padding)."""
    module = model.module if isinstance(model, Program) else model
    examples = model.example_inputs if isinstance(model, Program) else ()
    totals = torch.zeros(3, dtype=torch.float64, device=device)
    with evaluating(model):
        for index, batch in enumerate(batches):
            inputs, labels = split_batch(batch)
            inputs = as_program_inputs(inputs, examples, device)
            labels = labels.to(device)
            logits = logits_of(module(*inputs))
            if index == 0:
                check_labels(tuple(logits.shape), labels)
            valid = labels != IGNORE_LABEL
            totals[0] += ((logits.argmax(1) == labels) & valid).sum()
            totals[1] += F.cross_entropy(in_float32(logits), labels, ignore_index=IGNORE_LABEL,
                                         reduction="sum").double()
            totals[2] += valid.sum()
    return totals


def accuracy_summary(totals: torch.Tensor) -> dict[str, float]:
    correct, loss, count = totals.tolist()
    if count == 0:
        return {"accuracy": float("nan"), "loss": float("nan"), "count": 0}
    return {"accuracy": correct / count, "loss": loss / count, "count": int(count)}


def evaluate(model: Program | torch.nn.Module, batches: Iterable, *, device: str | torch.device | None = None
             ) -> dict[str, float]:
    """Top-1 accuracy (per pixel for dense outputs) and mean cross-entropy over the labelled items of
    `(inputs, labels)` batches; label -1 marks padding. Runs in eval mode and restores the mode after."""
    module = model.module if isinstance(model, Program) else model
    device = torch.device(device) if device is not None else module_device(module)
    return accuracy_summary(eval_totals(model, batches, device))
