"""Calibration batches for `prunefx prune`: the data-driven importance criteria (taylor, fisher, obs),
second-order compensation and batch-norm recalibration.

- `calibration_data(DATA, example, images)`: `--calibrate DATA`, a data set named as everywhere else
  (prunefx/data/splits.py): "fashion-mnist" (the training split, shuffled with a fixed seed, gray repeated to
  3 channels for an RGB model), "imagenet-sample" (the 20 offline images), a folder in ImageFolder
  layout with train/ (its train/ split, shuffled with a fixed seed), a folder whose train/ holds images
  and no class folder (`--data-format images`: train/'s images, as a flat folder), or a flat folder of images.
  Images are never resized to fit: the data's image shape must be the captured input's.
- `image_batches(folder, example)`: `--calibration DIR`, a flat folder of images (resized, centre-
  cropped and normalised like ImageNet evaluation);
- `noise_batches(example, count)`: standard-normal noise of the example input's shape, the default of
  the gradient criteria: noise finds channels the model never uses on any input, but only real images
  measure what matters for the task, so reports say which was used.
Every batch has the example's (captured) batch size: the graph is static.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from prunefx.assets import imagenet_transform
from prunefx.data.dataset_files import confined
from prunefx.data.formats import dense_format, format_data
from prunefx.data.image_files import IMAGE_SUFFIXES, image_files, read_image
from prunefx.data.load import load_data
from prunefx.data.splits import (
    FASHION_MNIST,
    IGNORED_LABEL,
    IMAGENET_SAMPLE,
    image_folder_split,
    scene_spec,
)
from prunefx.device import batches_on
from prunefx.graph.counted import counted
from prunefx.graph.errors import PrunefxError
from prunefx.graph.input_batches import as_program_inputs
from prunefx.options import MAX_CALIBRATION_IMAGES


def noise_batches(example: torch.Tensor, count: int, *, seed: int = 0) -> list[tuple[torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [as_program_inputs((torch.randn(example.shape, generator=generator),), (example,)) for _ in range(count)]


def image_batches(folder: str | Path, example: torch.Tensor, *, limit: int | None = None,
                  within: str | Path | None = None) -> list[tuple[torch.Tensor]]:
    """The images in `folder` (the first `limit` in name order), in full batches of the example's batch
    size (the graph is static, so a last, incomplete batch is left out); a linked image must lead
    nowhere outside `within` (default: `folder`)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PrunefxError(f"calibration folder {folder} does not exist")
    files = image_files(folder, IMAGE_SUFFIXES, recursive=False, within=within)[:limit]
    if not files:  # said first: a folder with nothing in it is the problem, whatever the model takes
        raise PrunefxError(f"calibration folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    _check_rgb(example, "calibration images")
    transform = imagenet_transform(int(example.shape[2]))
    images = []
    for path in files:  # a file that does not decode is named, never skipped (prunefx/data/image_files.py)
        images.append(transform(read_image(path)).as_subclass(torch.Tensor))
    batch = int(example.shape[0])
    if len(images) < batch:
        raise PrunefxError(f"calibration folder {folder} holds {len(images)} images, fewer than one batch of {batch}")
    return [as_program_inputs((torch.stack(images[i:i + batch]),), (example,))
            for i in range(0, len(images) - batch + 1, batch)]


def _unlabelled(split: Path) -> bool:
    """Whether `split` holds images directly and no class folder (unlabelled images, not an ImageFolder)."""
    return (not any(entry.is_dir() for entry in split.iterdir())
            and bool(image_files(split, recursive=False, within=split.parent)))


def _shape(values) -> str:
    return "x".join(str(int(v)) for v in values)


def _check_rgb(example: torch.Tensor, what: str) -> None:
    if example.dim() != 4 or example.shape[1] != 3 or example.shape[2] != example.shape[3]:
        raise PrunefxError(f"{what} need a square RGB input (N x 3 x S x S), the model takes {_shape(example.shape)}")


@dataclass(frozen=True)
class Calibration:
    batches: list[tuple[torch.Tensor]]
    description: str   # for reports: how many images, from where

    @property
    def images(self) -> int:
        return sum(int(batch[0].shape[0]) for batch in self.batches)

    def on(self, device: str | torch.device) -> Calibration:
        """The same batches on `device` (prunefx/device.py): some readers run the module on them as given."""
        return replace(self, batches=batches_on(self.batches, device) or [])


def calibration_data(data: str, example: torch.Tensor, images: int = 256, *, seed: int = 0) -> Calibration:
    """About `images` calibration images from `data` (see the module docstring), in batches of the
    example's shape and floating dtype: images // batch size batches, at least one."""
    calibration = _calibration_data(data, example, images, seed)
    return replace(calibration, batches=[as_program_inputs(batch, (example,)) for batch in calibration.batches])


# how a model gets another input shape: a saved Program keeps the one it was captured at
_RESHAPE = "--input-shape; a saved .pt2 keeps the shape it was captured at"


def _calibration_data(data: str, example: torch.Tensor, images: int, seed: int) -> Calibration:
    if isinstance(images, bool) or not isinstance(images, int) or not 1 <= images <= MAX_CALIBRATION_IMAGES:
        raise PrunefxError(f"the number of calibration images must be an integer from 1 to "
                           f"{MAX_CALIBRATION_IMAGES} (they are held in memory), not {images!r}")
    if example.dim() != 4:
        raise PrunefxError(f"calibration data needs an image input (N x C x H x W), the model takes "
                           f"{_shape(example.shape)}")
    batch = int(example.shape[0])
    count = max(images // batch, 1)
    text = str(data)
    if text == FASHION_MNIST:
        channels, height, width = (int(v) for v in example.shape[1:])
        if channels not in (1, 3) or (height, width) != (28, 28):
            raise PrunefxError(f"{FASHION_MNIST} gives 28x28 images (gray, or gray repeated to 3 channels), but "
                               f"the model takes {_shape(example.shape[1:])}: capture it at "
                               f"{batch}x{channels if channels in (1, 3) else 1}x28x28 ({_RESHAPE})")
        loader = load_data(FASHION_MNIST, batch, channels=channels, augment=False, validation=0, seed=seed).train
        return _from_loader(loader, count, f"{FASHION_MNIST} (training images, shuffled)")
    scene = scene_spec(text)
    if scene is not None:  # segmentation/detection scenes: the training canvases, at the model's input size
        return _scene_calibration(text, scene[1], example, count)
    if text == IMAGENET_SAMPLE:
        _check_rgb(example, f"{IMAGENET_SAMPLE} images")
        loader = load_data(IMAGENET_SAMPLE, batch, image_size=int(example.shape[2])).test
        return _from_loader(loader, count, f"{IMAGENET_SAMPLE} (the 20 offline ImageNet images)")
    folder = Path(text).expanduser()
    layout = dense_format(folder)
    if layout is not None:  # COCO, YOLO or mask folders: their training images at the model's input size
        return _format_calibration(folder, layout, example, count, seed)
    if not folder.is_dir():
        raise PrunefxError(f"unknown calibration data {text!r}: use {FASHION_MNIST!r}, {IMAGENET_SAMPLE!r}, "
                           "fashion-mnist-seg[:SIZE], fashion-mnist-det[:SIZE] or a folder of images (an ImageFolder layout with train/<class>/, or images directly in it)")
    if (folder / "train").is_dir():
        _check_rgb(example, "calibration images")
        train = confined(folder / "train", folder, "image folder")
        if _unlabelled(train):  # `--data-format images`' layout: calibration needs no labels, only the images
            batches = image_batches(train, example, limit=count * batch, within=folder)
            return Calibration(batches, f"{sum(len(b[0]) for b in batches)} images from {train} (no class folders)")
        loader = image_folder_split(train, batch, image_size=int(example.shape[2]), shuffle=True, seed=seed)
        return _from_loader(loader, count, f"{folder / 'train'} (ImageFolder, shuffled)")
    batches = image_batches(folder, example, limit=count * batch)
    return Calibration(batches, f"{sum(len(b[0]) for b in batches)} images from {folder}")


def _format_calibration(folder: Path, layout: str, example: torch.Tensor, count: int, seed: int) -> Calibration:
    batch, channels, height, width = (int(v) for v in example.shape)
    if channels not in (1, 3):
        raise PrunefxError(f"{folder} gives gray or RGB images, but the model takes {_shape(example.shape[1:])}")
    loader = format_data(folder, batch, data_format=layout, image_size=(height, width), channels=channels,
                         seed=seed).train
    return _from_loader(loader, count, f"{folder} ({layout} training images, shuffled)")


def _scene_calibration(text: str, size: int, example: torch.Tensor, count: int) -> Calibration:
    batch, channels, height, width = (int(v) for v in example.shape)
    if channels not in (1, 3) or (height, width) != (size, size):
        raise PrunefxError(f"{text} gives {size}x{size} canvases (gray, or gray repeated to 3 channels), but the "
                           f"model takes {_shape(example.shape[1:])}: capture it at "
                           f"{batch}x{channels if channels in (1, 3) else 3}x{size}x{size} ({_RESHAPE}) or ask for "
                           f"{text.partition(':')[0]}:{height}")
    # only as many training canvases as the calibration reads: composing 6000 would take a minute
    loader = load_data(text, batch, channels=channels, validation=0, train_canvases=count * batch,
                       test_canvases=batch).train
    return _from_loader(loader, count, f"{text} (training canvases)")


def _from_loader(loader, count: int, source: str) -> Calibration:
    batches, real = [], 0
    for inputs, labels in itertools.islice(iter(loader), count):
        batches.append((inputs,))
        # class labels mark padding images with IGNORED_LABEL; dense labels (masks, boxes) are one per image
        per_image = isinstance(labels, torch.Tensor) and labels.dim() == 1
        real += int((labels != IGNORED_LABEL).sum()) if per_image else int(inputs.shape[0])
    if not batches:
        raise PrunefxError(f"{source} holds fewer images than one batch")
    # the passes read every image of every batch: the copies that fill the last one are counted by them too
    repeated = sum(int(batch[0].shape[0]) for batch in batches) - real
    filled = f" and {counted(repeated, 'copy', 'copies')} of its last ones filling the last batch" if repeated else ""
    return Calibration(batches, f"{real} images from {source}{filled}")
