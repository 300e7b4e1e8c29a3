"""Semantic segmentation layout (VOC / Cityscapes style): images and same-named PNG masks of class ids

    ROOT/images/train/NAME.jpg   ROOT/masks/train/NAME.png
    ROOT/images/val/...          ROOT/masks/val/...
    ROOT/images/test/...         ROOT/masks/test/...     (optional)
    ROOT/classes.txt             (optional: class i's name on line i + 1)
    ROOT/palette.txt             (optional: colour masks, one 'R G B name' line per class; prunefx/data/palette.py)

A mask pixel holds its class id (a gray PNG, or a palette PNG as VOC ships them: the palette index is
the id), or with a palette file (ROOT/palette.txt, or one named by `--palette`) its class's colour, in
any PNG mode (RGB, or palette PNGs whose indices are not class ids); `ignore_index` (255 by default, VOC's object borders) marks pixels that are neither trained
nor scored. Without classes.txt the classes are 0 .. the largest id in the train masks. Every mask is
read once before training, to find ids outside the classes, and its size is checked against its image's.
classes.txt, palette.txt and every mask must lie inside ROOT, links followed (prunefx/data/dataset_files.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from prunefx.data.dataset_files import confined, read_text
from prunefx.data.palette import PALETTE_FILE, Palette, read_palette
from prunefx.data.samples import SplitFiles, image_size_of, images_in, inside, read_mask
from prunefx.graph.errors import PrunefxError, printable

CLASSES_FILE = "classes.txt"
DEFAULT_IGNORE_INDEX = 255


def is_mask_folder(root: Path) -> bool:
    return (root / "images" / "train").is_dir() and (root / "masks" / "train").is_dir()


def read_split(root: Path, split: str, palette: Palette | None = None) -> SplitFiles:
    # flat: a mask is found by its image's name in masks/<split>/; links may lead anywhere inside the data folder
    images = images_in(confined(root / "images" / split, root, "image folder"), within=root)
    masks = []
    for image in images:
        mask = root / "masks" / split / f"{image.stem}.png"
        if not mask.is_file():
            raise PrunefxError(f"image {image} has no mask {mask}")
        masks.append(inside(mask, root, "mask"))
    return SplitFiles(images, str(root / "images" / split), masks=masks, palette=palette)


def _ids_in(split: SplitFiles, ignore_index: int) -> tuple[int, Path]:
    """The largest class id in the split's masks (ignored pixels left out) and the mask holding it."""
    largest, where = -1, split.masks[0]
    for image, path in zip(split.images, split.masks or []):
        mask = read_mask(path, split.palette)
        height, width = image_size_of(image)
        if mask.shape[:2] != (height, width):
            raise PrunefxError(f"mask {printable(str(path))} is {mask.shape[1]}x{mask.shape[0]} but its image "
                               f"{printable(str(image))} is {width}x{height}")
        ids = np.unique(mask)
        ids = ids[ids != ignore_index]
        if ids.size and int(ids[-1]) > largest:
            largest, where = int(ids[-1]), path
    return largest, where


def class_names(root: Path, largest_in_train: int) -> tuple[str, ...]:
    path = root / CLASSES_FILE
    if path.is_file():
        text = read_text(path, root, "class list")
        lines = [line.strip() for line in text.splitlines()]
        while lines and not lines[-1]:
            lines.pop()
        if "" in lines:  # skipped, it would give every class below it the id of the one above
            raise PrunefxError(f"{printable(str(path))}:{lines.index('') + 1} is blank: class i is named on line "
                               "i + 1, so every class needs its line")
        names = tuple(printable(line) for line in lines)
        if len(names) < 2:
            raise PrunefxError(f"{path} names {len(names)} class; segmentation needs at least 2")
        return names
    return tuple(str(i) for i in range(max(largest_in_train + 1, 2)))


def _palette(root: Path, palette: Path | str | None, ignore_index: int) -> Palette | None:
    if palette is not None:
        return read_palette(Path(palette).expanduser(), ignore_index)
    return read_palette(root / PALETTE_FILE, ignore_index, root) if (root / PALETTE_FILE).is_file() else None


def mask_splits(root: Path, ignore_index: int = DEFAULT_IGNORE_INDEX, palette: Path | str | None = None
                ) -> tuple[dict[str, SplitFiles], tuple[str, ...]]:
    """role -> split, and the class names (a palette's, else classes.txt's, else the ids'); a mask id outside
    the classes, or a colour outside the palette, is one line naming the mask."""
    for role in ("train", "val"):
        if not (root / "images" / role).is_dir() and (role == "train" or not (root / "images" / "test").is_dir()):
            raise PrunefxError(f"mask data {root} lacks images/{role}/ (and masks/{role}/)")
    colours = _palette(root, palette, ignore_index)
    splits = {role: read_split(root, role, colours) for role in ("train", "val", "test")
              if (root / "images" / role).is_dir()}
    found = {role: _ids_in(split, ignore_index) for role, split in splits.items()}  # each mask read once
    if found["train"][0] <= 0:  # what a binary mask stored as 0 and 255 reads as: every object ignored
        raise PrunefxError(f"the masks of {root / 'masks' / 'train'} hold no class but 0 (background) besides the "
                           f"ignore index {ignore_index}: nothing to segment; write objects as class ids 1, 2, ... "
                           f"(a binary mask stored as 0/255 reads 255 as the ignore index)")
    names = colours.names if colours is not None else class_names(root, found["train"][0])
    for largest, where in found.values():
        if largest >= len(names):
            raise PrunefxError(f"mask {where} holds class id {largest}, outside the {len(names)} classes "
                               f"0..{len(names) - 1} (ignore index {ignore_index})")
    return splits, names
