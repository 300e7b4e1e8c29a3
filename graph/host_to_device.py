"""Host arrays on a device in one copy: on a GPU a copy to the device that is not non_blocking waits for the
device's queue, so many small index arrays (every channel's columns of a layer, the kept and removed columns of
a compensation) go as one array and come back as views of it."""

from __future__ import annotations

import numpy as np
import torch


def on_device_at_once(arrays: list[np.ndarray], device: torch.device | str) -> list[torch.Tensor]:
    """Each array on `device`, in order, as views of one copy (one dtype: numpy's common one)."""
    if not arrays:
        return []
    joined = torch.from_numpy(np.concatenate(arrays)).to(device)
    return list(torch.split(joined, [array.size for array in arrays]))
