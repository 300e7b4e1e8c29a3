"""Gradients for prunefx's own training and scoring, whatever grad mode its caller is in.

A user may call a pass from inside `torch.no_grad()` (evaluation code, a serving loop); training and gradient
importance then met tensors that record no gradients and failed deep inside ("does not require grad", or a
misleading complaint about the model's output). `torch.enable_grad()` inside the block fixes that and leaves
the caller's mode as it was after it. `torch.inference_mode()` cannot be left that way (the tensors made under
it never record gradients), so it is refused in one line.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from prunefx.graph.errors import PrunefxError


@contextlib.contextmanager
def gradients_on(what: str) -> Iterator[None]:
    """Gradients recorded inside the block; `what` (say, "distill") is named when inference mode refuses them."""
    if torch.is_inference_mode_enabled():
        raise PrunefxError(f"{what} computes gradients, which torch.inference_mode() forbids: call it outside "
                           "that block (torch.no_grad() is fine)")
    with torch.enable_grad():
        yield
