"""Calibration batches for the gradient importance criteria (taylor, fisher).

From a folder of images (resized, centre-cropped and normalised like ImageNet evaluation), or,
without one, batches of standard-normal noise of the example input's shape: noise finds channels
the model never uses on any input, but only real images measure what matters for the task, so
reports say which was used.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torchvision.io import ImageReadMode, decode_image

from prunefx.assets import imagenet_transform
from prunefx.graph.errors import PrunefxError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}


def noise_batches(example: torch.Tensor, count: int, *, seed: int = 0) -> list[tuple[torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(example.shape, generator=generator),) for _ in range(count)]


def image_batches(folder: str | Path, example: torch.Tensor) -> list[tuple[torch.Tensor]]:
    """The images in `folder`, in full batches of the example's batch size (the graph is static, so
    a last, incomplete batch is left out)."""
    folder = Path(folder)
    if example.dim() != 4 or example.shape[1] != 3 or example.shape[2] != example.shape[3]:
        raise PrunefxError(f"calibration images need a square RGB input (N x 3 x S x S), the model takes "
                           f"{'x'.join(map(str, example.shape))}")
    if not folder.is_dir():
        raise PrunefxError(f"calibration folder {folder} does not exist")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise PrunefxError(f"calibration folder {folder} holds no .jpg/.jpeg/.png images")
    transform = imagenet_transform(int(example.shape[2]))
    images = []
    for path in files:
        try:
            images.append(transform(decode_image(str(path), mode=ImageReadMode.RGB)).as_subclass(torch.Tensor))
        except RuntimeError as error:
            raise PrunefxError(f"cannot read calibration image {path}: {error}") from None
    batch = int(example.shape[0])
    if len(images) < batch:
        raise PrunefxError(f"calibration folder {folder} holds {len(images)} images, fewer than one batch of {batch}")
    return [(torch.stack(images[i:i + batch]),) for i in range(0, len(images) - batch + 1, batch)]
