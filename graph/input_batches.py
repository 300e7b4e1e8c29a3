"""A batch made ready for a Program: on its device, and in its inputs' precision.

Data sets give float32 images; a Program captured in half precision (or float64) takes its own dtype. A floating
tensor is cast to the dtype of the example input at its place; integer and boolean inputs (token ids, masks) are
left as they are, and so is a tensor for which the Program has no example.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def as_program_inputs(batch: Sequence[torch.Tensor], examples: Sequence[torch.Tensor],
                      device: torch.device | str | None = None, *, non_blocking: bool = False
                      ) -> tuple[torch.Tensor, ...]:
    """`batch` on `device` (None: where each tensor is) in the example inputs' floating dtypes."""
    return tuple(tensor.to(tensor.device if device is None else device,
                           dtype=_dtype_for(tensor, examples[index] if index < len(examples) else None),
                           non_blocking=non_blocking)
                 for index, tensor in enumerate(batch))


def _dtype_for(tensor: torch.Tensor, example: torch.Tensor | None) -> torch.dtype:
    if example is not None and tensor.is_floating_point() and example.is_floating_point():
        return example.dtype
    return tensor.dtype
