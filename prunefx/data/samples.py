"""Samples of the on-disk dense-task formats (COCO JSON, YOLO txt, mask folders) as one torch Dataset.

Each format reader (prunefx/data/coco.py, datasets_yolo.py, datasets_masks.py) only parses its
annotations into a `SplitFiles`: image paths plus, per image, its boxes (class, x1, y1, x2, y2 in the
image's own pixels) or its mask file. `LabelledImages` then decodes one image at a time (in DataLoader
worker processes), resizes it to the data set's static size (the captured graph takes one shape) and
returns the labels in prunefx's layout (prunefx/data/splits.py): a mask H x W (-1 where ignored) or boxes
max_items x 5 with rows of -1 where the image has fewer items.

Everything a reader can check without decoding every image is checked while the split is read, before
any training: missing files, labels outside the classes, empty splits, and every image's header.
"""

from __future__ import annotations

import dataclasses
import io
import os
from pathlib import Path

import numpy as np
import torch
from PIL import ExifTags, Image
from torch.utils.data import Dataset

from prunefx.data import image_files
from prunefx.data.batches import NO_ITEMS
from prunefx.data.normalise import normalise, pixel_statistics
from prunefx.data.palette import Palette
from prunefx.graph.errors import PrunefxError, printable
from prunefx.graph.safety.regular_files import read_regular_file, require_regular_file

IGNORED = -1
_DECODE_ERRORS = image_files.DECODE_ERRORS


def open_image(path: Path, channels: int) -> np.ndarray:
    """An image file as H x W x C uint8 (C = 1 gray or 3 RGB), decoded by prunefx/data/image_files.py (regular
    files, size and pixel limits, one line naming a file that does not decode)."""
    image = image_files.open_image(path)
    pixels = np.asarray(image.convert("L") if channels == 1 else image)
    return pixels.reshape(image.height, image.width, channels)


def _cannot_read(path: Path, what: str, error: Exception) -> PrunefxError:
    return PrunefxError(f"cannot read {what} {printable(str(path))}: {image_files.decode_error_text(error)} "
                        "(remove or replace the file)")


def image_size_of(path: Path) -> tuple[int, int]:
    """(height, width) from the file's header, as shown (a camera's EXIF quarter turn applied, as open_image
    applies it), checked against image_files' pixel limit; a file whose
    header does not decode is one line naming it. Only the header is read: this runs over every image
    of a data set before training."""
    require_regular_file(path, "image")  # a FIFO or device named like an image would hang PIL's open
    try:
        with Image.open(path) as image:
            turned = _turned_a_quarter(image)
            image.verify()  # the header and, for PNG, the chunk checksums: no pixels decoded
            height, width = (image.width, image.height) if turned else (image.height, image.width)
    except _DECODE_ERRORS as error:
        raise _cannot_read(path, "image", error) from None
    if width * height > image_files.MAX_IMAGE_PIXELS:
        raise image_files.too_many_pixels(path, f"{width}x{height}")
    return height, width


def _turned_a_quarter(image: Image.Image) -> bool:
    """Whether the image's EXIF orientation turns it a quarter, read from the header alone: PIL reads a PNG's
    EXIF by decoding it, so a PNG's is the eXIf chunk found before its pixels."""
    if image.format == "PNG":
        exif = Image.Exif()
        if image.info.get("exif"):
            exif.load(image.info["exif"])
    else:
        exif = image.getexif()
    return exif.get(ExifTags.Base.Orientation) in image_files.QUARTER_TURNS


def inside(path: Path, folder: Path, what: str) -> Path:
    """`path` if it (links followed) lies inside `folder`: a data set is what lies inside its folder."""
    real, root = os.path.realpath(path), os.path.realpath(folder)
    if os.path.commonpath([real, root]) != root:
        raise PrunefxError(f"{what} {printable(str(path))} leads out of {printable(str(folder))}")
    return path


def images_in(folder: Path, *, within: Path | None = None, recursive: bool = False) -> list[Path]:
    """The image files directly in `folder` (with `recursive`, in its sub-folders too), in name order, by
    image_files' walk: no linked folder entered, no linked file leading out of `within` (default `folder`;
    a split's images may link anywhere inside its data folder)."""
    return image_files.image_files(folder, recursive=recursive, within=within)


@dataclasses.dataclass(frozen=True)
class SplitFiles:
    """One split as read from disk: `images`; per image either `boxes` (k x 5 float: class, x1, y1, x2, y2
    in that image's pixels) or `masks` (the mask file: class ids or, with `palette`, colours; see
    prunefx/data/masks.py); `source` names where the split came from."""

    images: list[Path]
    source: str
    boxes: list[np.ndarray] | None = None
    masks: list[Path] | None = None
    palette: Palette | None = None
    declared_sizes: list[tuple[int, int] | None] | None = None  # (H, W) the annotations state, checked by check_headers

    def __post_init__(self) -> None:
        if not self.images:
            raise PrunefxError(f"{self.source} holds no images (an empty split)")


class LabelledImages(Dataset):
    """`split`'s images at `size` (H, W), normalised (`mean_std`, default the pixel statistics in force: data/normalise.py), with their labels in
    prunefx's layout.

    Detection pads every image's boxes to `max_items` rows (the same for every split of a data set) and
    scales them with the resize. Segmentation resizes masks with nearest neighbours and maps
    `ignore_index` to -1. Unlabelled splits give the label `unlabelled` (prunefx/data/unlabelled.py)."""

    def __init__(self, split: SplitFiles, *, size: tuple[int, int], channels: int, max_items: int = 0,
                 ignore_index: int | None = None, mean_std: tuple[list[float], list[float]] | None = None,
                 unlabelled: int = IGNORED):
        self.split, self.size, self.channels, self.unlabelled = split, size, channels, unlabelled
        self.max_items, self.ignore_index = max_items, ignore_index
        mean, std = mean_std or pixel_statistics(channels)
        self.mean, self.std = torch.tensor(mean)[:, None, None], torch.tensor(std)[:, None, None]
        self.root = split.source  # named in the loader's description

    def __len__(self) -> int:
        return len(self.split.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        path = self.split.images[index]
        pixels = torch.from_numpy(open_image(path, self.channels).copy()).permute(2, 0, 1)
        height, width = pixels.shape[1:]
        if (height, width) != self.size:
            from torchvision.transforms.v2 import functional as TF  # on use: 2 s of every prunefx start

            pixels = TF.resize(pixels, list(self.size), antialias=True)
        image = normalise(pixels, self.mean, self.std)  # the in-memory batches' arithmetic, bit for bit
        if self.split.boxes is not None:
            return image, self._boxes(self.split.boxes[index], height, width)
        if self.split.masks is not None:
            return image, self._mask(self.split.masks[index], path, (height, width))
        return image, torch.tensor(self.unlabelled)

    def _boxes(self, boxes: np.ndarray, height: int, width: int) -> torch.Tensor:
        rows = torch.full((self.max_items, 5), float(IGNORED))
        scaled = torch.from_numpy(boxes).float().reshape(-1, 5)
        scaled[:, 1::2] *= self.size[1] / width
        scaled[:, 2::2] *= self.size[0] / height
        rows[:len(scaled)] = scaled
        if not len(scaled):  # a real image without objects, told apart from a padding copy (all -1)
            rows[0, 0] = NO_ITEMS
        return rows

    def _mask(self, path: Path, image_path: Path, image_size: tuple[int, int]) -> torch.Tensor:
        mask = torch.from_numpy(read_mask(path, self.split.palette).astype(np.int64))
        if tuple(mask.shape) != image_size:
            raise PrunefxError(f"mask {path} is {mask.shape[1]}x{mask.shape[0]} but its image {image_path} is "
                               f"{image_size[1]}x{image_size[0]}")
        if self.ignore_index is not None:
            mask[mask == self.ignore_index] = IGNORED
        if tuple(mask.shape) != self.size:
            from torchvision.transforms.v2 import InterpolationMode
            from torchvision.transforms.v2 import functional as TF

            # through float: interpolation has no integer kernels, and class ids < 2**24 stay exact
            mask = TF.resize(mask[None].float(), list(self.size), interpolation=InterpolationMode.NEAREST_EXACT)[0].long()
        return mask


def read_mask(path: Path, palette: Palette | None = None) -> np.ndarray:
    """A mask PNG as H x W class ids: a palette PNG (VOC) gives its indices, a gray PNG its values; with a
    `palette` every pixel's colour is looked up in it instead. Read as a regular file within image_files'
    byte and pixel limits."""
    data = read_regular_file(path, "mask", image_files.MAX_IMAGE_BYTES)
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.width * image.height > image_files.MAX_IMAGE_PIXELS:
                raise PrunefxError(f"mask {printable(str(path))} declares {image.width}x{image.height} pixels, more "
                                   f"than the limit of {image_files.MAX_IMAGE_PIXELS:,}")
            if palette is not None:
                return palette.ids(np.asarray(image.convert("RGB")), path)
            if image.mode not in ("P", "L", "I", "I;16"):
                raise PrunefxError(f"mask {printable(str(path))} is {image.mode}, not class ids (a gray or palette "
                                   "PNG); colour masks need a palette file (one 'R G B name' line per class)")
            return np.asarray(image)
    except _DECODE_ERRORS as error:
        raise _cannot_read(path, "mask", error) from None


class UnlabelledSplit(PrunefxError):
    """A split where not one image has a label: its labels are elsewhere, or it is a benchmark's unlabelled test."""


def check_headers(split: SplitFiles) -> tuple[int, int]:
    """Every image's header decodes (one line naming the first that does not), and is the size its annotations
    state, where they state one (boxes in pixels of another size would land elsewhere); (H, W) of the first."""
    sizes = [image_size_of(path) for path in split.images]
    for path, size, declared in zip(split.images, sizes, split.declared_sizes or [None] * len(sizes)):
        if declared is not None and tuple(declared) != size:
            raise PrunefxError(f"{split.source}: image {printable(str(path))} is {size[1]}x{size[0]} pixels but its "
                               f"annotations say {declared[1]}x{declared[0]}: its boxes would land elsewhere (fix "
                               "the image's width and height, or the file)")
    return sizes[0]
