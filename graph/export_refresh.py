"""A kept torch.export of a Program brought up to date when only tensor values were replaced.

A pass that writes new values into tensors of the same shape (recalibrated batch-norm statistics, compensated
weights stored anew) leaves the graph as it was, and so what torch.export would trace; exporting again costs
seconds on a ResNet-50. The kept export is then rebuilt around the same graph with the Program's current tensors
(a new ExportedProgram: one handed out before keeps the tensors it had).
"""

from __future__ import annotations

import torch


def with_current_tensors(exported: torch.export.ExportedProgram, module: torch.nn.Module,
                         replaced: set[str]) -> torch.export.ExportedProgram | None:
    """`exported` with the tensors `replaced` (parameter and buffer names) taken from `module`; None when any of
    them is not a like-for-like replacement (another shape, type, device or kind, or one the export does not hold)."""
    current = dict((*module.named_parameters(), *module.named_buffers()))
    state = dict(exported.state_dict)
    for name in replaced:
        old, new = state.get(name), current.get(name)
        if old is None or new is None or not _alike(old, new):
            return None
        state[name] = new
    return exported._update(exported.graph_module, exported.graph_signature, state_dict=state)


def _alike(old: torch.Tensor, new: torch.Tensor) -> bool:
    return (old.shape == new.shape and old.dtype == new.dtype and old.device == new.device
            and isinstance(old, torch.nn.Parameter) == isinstance(new, torch.nn.Parameter)
            and old.requires_grad == new.requires_grad)
