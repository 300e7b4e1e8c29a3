"""In-memory images and labels as a data set (TensorSamples), read a batch at a time and augmented per batch,
and their static batches (tensor_batches, prunefx/data/batches.py's StaticBatches)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.data import Dataset

from prunefx.data.augment import RandomCropFlip
from prunefx.data.batches import StaticBatches
from prunefx.graph.errors import PrunefxError


class TensorSamples(Dataset):
    """In-memory images (N x C x H x W, any dtype: uint8 keeps Fashion-MNIST at 47 MB) and labels; each
    image through `transform` (e.g. torchvision's random crop and flip, one call per image), or whole batches
    through `augment` (prunefx.data.augment.RandomCropFlip: one vectorised call per batch), or neither."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform: Callable | None = None,
                 augment: RandomCropFlip | None = None):
        if images.dim() != 4 or len(images) != len(labels):
            raise PrunefxError(f"expected N x C x H x W images and N labels, got images "
                               f"{tuple(images.shape)} and labels {tuple(labels.shape)}")
        if transform is not None and augment is not None:
            raise PrunefxError("give a per-image transform or a batched augmentation, not both")
        self.images, self.transform, self.augment = images, transform, augment
        self.labels = labels if labels.is_floating_point() else labels.long()
        self.reads_batches = transform is None  # whole batches at once (see read_items)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        if self.augment is not None:
            return self.read_items([index])[0]
        image = self.images[index]
        return (self.transform(image) if self.transform else image), self.labels[index]

    def __getitems__(self, indices: list[int]) -> list:
        # torch's DataLoader reads a batch through this: one gather instead of one call per image
        return self.read_items(indices) if self.reads_batches else [self[index] for index in indices]

    def read_items(self, indices: list[int], seed: int | None = None) -> list:
        """(image, label) pairs of `indices`, gathered at once and augmented as one batch: each item's draw
        from the table of epoch seed `seed` (the same whatever batch reads it), else from torch's generator."""
        index = torch.as_tensor(indices, dtype=torch.long)
        images = self.images[index]
        if self.augment is not None:
            draws = self.augment.draw(len(index)) if seed is None else self.augment.table(len(self), seed)
            images = self.augment(images, draws if seed is None else {k: v[index] for k, v in draws.items()})
        return list(zip(images.unbind(0), self.labels[index].unbind(0)))


def tensor_batches(images: torch.Tensor, labels: torch.Tensor, batch_size: int, *, shuffle: bool,
                   transform: Callable | None = None, augment: RandomCropFlip | None = None,
                   prepare: Callable | None = None, seed: int = 0, num_workers: int = 0) -> StaticBatches:
    """Static batches of in-memory tensors (see `StaticBatches`, `TensorSamples`)."""
    return StaticBatches(TensorSamples(images, labels, transform, augment), batch_size, shuffle=shuffle, seed=seed,
                         num_workers=num_workers, prepare=prepare)
