"""Stored pixels to model input: the one normalising arithmetic of every data route (normalise) and the
batch transform that applies it (NormalizeBatch)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

# ImageNet's per-channel statistics (the values timm.data and torchvision's weights use; tests/test_assets.py
# checks them against timm's): written here so that reading data does not import timm, 0.7 s of a start.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalise(pixels: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, scale: float = 1 / 255) -> torch.Tensor:
    """(pixels * scale - mean) / std in float32: the one arithmetic of every route (batches in memory, files
    read by workers), so that the same pixels give the same bits whichever way they came. `x / 255` and
    `x * (1 / 255)` differ in the last bit for 8 % of pixels, and training amplifies that: the LR-ASPP dense
    run through the files ended its second epoch 1.8 points away from the in-memory run (dense_tasks_ondisk.md)."""
    return (pixels.float() * scale - mean) / std


class NormalizeBatch:
    """Stored images (e.g. uint8) -> float model input: scale, normalise per channel, and repeat a
    single gray channel `channels` times for models that want RGB."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], *, scale: float = 1 / 255,
                 channels: int | None = None):
        self.mean = torch.tensor(mean, dtype=torch.float32)[:, None, None]
        self.std = torch.tensor(std, dtype=torch.float32)[:, None, None]
        self.scale = scale
        self.channels = channels

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        images = normalise(images, self.mean, self.std, self.scale)
        if self.channels and self.channels != images.shape[1]:
            # repeat, not expand: a model may write into its input in place.
            images = images.repeat(1, self.channels // images.shape[1], 1, 1)
        return images
