"""Batched augmentation of in-memory images: one vectorised crop and flip per batch instead of one
torchvision call per image (Fashion-MNIST's 55,000 images a epoch made the per-image route the training
step's bottleneck).

`RandomCropFlip` does what torchvision's `RandomCrop(size, padding=p)` then `RandomHorizontalFlip()` do
to each image (zero padding, a crop of the original size, a flip with probability 1/2), on a whole
N x C x H x W batch at once. Its draws are a table over the whole data set, one row per item, drawn from
one seed per epoch: an item's crop and flip depend on (seed, epoch, its index) only, never on which batch,
worker or DDP rank reads it, the promise StaticBatches makes for per-image transforms too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from prunefx.graph.errors import PrunefxError


class RandomCropFlip:
    """Random crop after `padding` pixels of zero padding, and a random horizontal flip (with `flip`),
    of N x C x H x W batches. Zero is black in stored (uint8, unnormalised) images, as in torchvision."""

    def __init__(self, padding: int = 2, flip: bool = True):
        if padding < 0:
            raise PrunefxError(f"crop padding must be non-negative, got {padding}")
        self.padding, self.flip = padding, flip
        self._table: tuple[int, int, dict[str, torch.Tensor]] | None = None  # (seed, count, draws), last epoch's

    def table(self, count: int, seed: int) -> dict[str, torch.Tensor]:
        """Every item's draw for one epoch: `top`, `left` (the crop's corner in the padded image; `padding`
        is no shift) and `flip`, each a tensor of `count` values. Kept until another seed is asked for."""
        if self._table is None or self._table[:2] != (seed, count):
            generator = torch.Generator().manual_seed(seed)
            span = 2 * self.padding + 1
            draws = {"top": torch.randint(span, (count,), generator=generator),
                     "left": torch.randint(span, (count,), generator=generator),
                     "flip": (torch.rand(count, generator=generator) < 0.5) & self.flip}
            self._table = (seed, count, draws)
        return self._table[2]

    def draw(self, count: int) -> dict[str, torch.Tensor]:
        """`count` draws from torch's global generator (outside a seeded loader)."""
        span = 2 * self.padding + 1
        return {"top": torch.randint(span, (count,)), "left": torch.randint(span, (count,)),
                "flip": (torch.rand(count) < 0.5) & self.flip}

    def __call__(self, images: torch.Tensor, draws: dict[str, torch.Tensor]) -> torch.Tensor:
        """`images` (N x C x H x W) cropped and flipped by `draws` (N of each)."""
        height, width = images.shape[-2:]
        pad = self.padding
        padded = F.pad(images, (pad, pad, pad, pad)) if pad else images
        # Every crop gathered at once: rows[n, y] = top[n] + y, columns[n, x] = left[n] + x; a flip reads
        # the columns right to left.
        rows = draws["top"][:, None] + torch.arange(height)
        steps = torch.where(draws["flip"][:, None], torch.arange(width - 1, -1, -1), torch.arange(width))
        columns = draws["left"][:, None] + steps
        batch = torch.arange(len(images))[:, None, None, None]
        channels = torch.arange(images.shape[1])[None, :, None, None]
        return padded[batch, channels, rows[:, None, :, None], columns[:, None, None, :]]

    def __repr__(self) -> str:
        return f"RandomCropFlip(padding={self.padding}, flip={self.flip})"
