"""Tensors the captured call never reads keep their dense shapes in a written-back model (nothing in the program
says how to cut them), and the proof cannot see them: a call on another path that reads one (a masked-image
model's `mask_token`, read only with `bool_masked_pos`) meets the pruned widths. `warn_unread` names those whose
shape holds a width the pruning changed, so that the user learns it before that call does."""

from __future__ import annotations

import warnings

import torch
from torch import nn


class WriteBackWarning(UserWarning):
    """A written-back model that is proven on the captured call but holds something another call may trip on."""


def changed_widths(pruned: dict[str, torch.Tensor], dense: dict[str, torch.Tensor]) -> set[int]:
    """The dense sizes of every dimension the pruning changed, over the tensors both hold by name."""
    return {before for key in pruned.keys() & dense.keys()
            for before, after in zip(dense[key].shape, pruned[key].shape) if before != after}


def unread_tensors(module: nn.Module, read: set[str], widths: set[int]) -> list[tuple[str, tuple[int, ...]]]:
    """The tensors of `module` that the captured call never read (`read`: the dense capture's tensor names) and
    whose shape holds one of the changed `widths`: (first name, shape), by name."""
    names: dict[int, list[str]] = {}  # a tensor shared under several names is read if any of them is
    shapes: dict[int, tuple[int, ...]] = {}
    for key, tensor in [*module.named_parameters(remove_duplicate=False), *module.named_buffers(remove_duplicate=False)]:
        names.setdefault(id(tensor), []).append(key)
        shapes[id(tensor)] = tuple(tensor.shape)
    return sorted((keys[0], shapes[ident]) for ident, keys in names.items()
                  if not read.intersection(keys) and any(size in widths for size in shapes[ident]))


def warn_unread(module: nn.Module, read: set[str], widths: set[int], name: str) -> list[str]:
    """Warn (WriteBackWarning) of the unread tensors that keep a changed width (unread_tensors); their names."""
    found = unread_tensors(module, read, widths)
    if found:
        key, shape = found[0]
        warnings.warn(f"{name} written back: {len(found)} tensor(s) the captured call never reads keep their dense "
                      f"shape ('{key}' {shape}); a call that reads them (another input or branch) meets the "
                      "pruned widths: capture the model on that path to prune them too", WriteBackWarning,
                      stacklevel=3)
    return [key for key, _ in found]
