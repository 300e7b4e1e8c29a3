"""Image files from users' folders, read the one safe way every prunefx decoder shares.

- `image_files(folder)`: the image files under a folder, walked without following symlinked folders
  (a link to `..` would make the walk grow without end) and refusing a file whose link leads out of
  the folder: a data set is what lies inside its folder.
- `open_image(path)` (PIL, RGB, turned as its EXIF orientation says: a phone's portrait photo is stored sideways,
  and label tools and Ultralytics read it upright; 16-bit gray scaled to 8 bits, not clipped at 255) and
  `read_image(path)` (the same, as uint8 3 x H x W): the file is
  read once, as a regular file of at most MAX_IMAGE_BYTES, and the pixel count its header declares is
  checked against MAX_IMAGE_PIXELS before anything is decoded (a 1.5 MB PNG can declare 40000 x
  40000 pixels, 4.8 GB decoded). Every failure is one PrunefxError line naming the file.
- One decoder, PIL, for every image (`--data` and `--calibrate` alike): it raises on a corrupt file,
  where torchvision's PNG decoder ends the process (libpng's error on one flipped bit of pixel data is
  a segmentation fault there), and the same file gives the same pixels on every path.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from prunefx.graph.errors import PrunefxError, first_line, printable
from prunefx.graph.safety.regular_files import read_regular_file

MAX_IMAGE_PIXELS = 40_000_000          # an 8K frame (7680 x 4320) is 33 million
MAX_IMAGE_BYTES = 256 << 20
# What PIL raises for a file it cannot decode. ImportError too: once Ultralytics is imported it replaces
# PIL.Image.open with a version that, on an unidentified file, imports an optional HEIF plugin (pi_heif)
# and lets the ModuleNotFoundError escape instead of PIL's UnidentifiedImageError.
DECODE_ERRORS = (OSError, ValueError, SyntaxError, ImportError, Image.DecompressionBombError)


def decode_error_text(error: Exception) -> str:
    """Why a file did not decode, in one line (a missing optional plugin means no decoder knew the file)."""
    return "cannot identify the image format" if isinstance(error, ImportError) else first_line(error)
# EXIF orientations that turn the stored image a quarter: shown, its width and height swap
QUARTER_TURNS = frozenset({5, 6, 7, 8})
# 16- and 32-bit integer gray (16-bit PNG, TIFF): read as 16-bit values and scaled to 8 bits
_WIDE_GRAY = ("I;16", "I;16B", "I;16L", "I")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def _inside(path: str, root: str) -> bool:
    return os.path.commonpath([path, root]) == root


def image_files(folder: str | Path, suffixes: Iterable[str] = IMAGE_SUFFIXES, *, recursive: bool = True,
                within: str | Path | None = None) -> list[Path]:
    """The files under `folder` whose suffix (any case) is in `suffixes`, sorted. Symlinked folders are
    not entered; a symlinked file is kept only if it resolves inside `within` (default: `folder`)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PrunefxError(f"image folder {printable(str(folder))} does not exist")
    root = os.path.realpath(within if within is not None else folder)
    start = os.path.realpath(folder)
    if not _inside(start, root):
        raise PrunefxError(f"{printable(str(folder))} is a link that leads out of {printable(str(within))}")
    wanted = tuple(suffix.lower() for suffix in suffixes)
    found = []
    for directory, subfolders, names in os.walk(folder, followlinks=False):
        if not recursive:
            subfolders.clear()
        for name in names:
            path = os.path.join(directory, name)
            if not name.lower().endswith(wanted):
                continue
            if os.path.islink(path) and not _inside(os.path.realpath(path), root):
                raise PrunefxError(f"image {printable(path)} is a link that leads out of "
                                   f"{printable(str(within if within is not None else folder))}")
            found.append(Path(path))
    return sorted(found)


def class_folder_samples(directory: str | Path, class_to_idx: Mapping[str, int],
                         suffixes: Iterable[str] = IMAGE_SUFFIXES) -> list[tuple[str, int]]:
    """(path, class index) for every image of each `directory/<class>/` folder: torchvision
    ImageFolder's samples, found by `image_files` instead of a walk that follows every link. Links (a
    class folder, an image) may lead anywhere inside the data folder, the split's parent (ROOT/train/)."""
    samples = []
    for name in sorted(class_to_idx):
        class_folder = Path(directory) / name
        if class_folder.is_dir():
            files = image_files(class_folder, suffixes, within=Path(directory).parent)
            samples += [(str(path), class_to_idx[name]) for path in files]
    return samples


def _checked_bytes(path: str | Path) -> tuple[bytes, Image.Image]:
    """The file's bytes and its PIL image opened lazily (header read, nothing decoded), after the
    declared size passed the pixel limit."""
    data = read_regular_file(path, "image", MAX_IMAGE_BYTES)
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:  # PIL's own, higher limit, checked from the same header
        raise too_many_pixels(path, "more") from None
    except DECODE_ERRORS as error:
        raise PrunefxError(f"cannot read image {printable(str(path))}: {decode_error_text(error)} "
                           "(remove or replace the file)") from None
    width, height = image.size
    if width * height > MAX_IMAGE_PIXELS:
        raise too_many_pixels(path, f"{width}x{height}")
    return data, image


def too_many_pixels(path: str | Path, declared: str) -> PrunefxError:
    """The one-line refusal of an image whose header declares more than MAX_IMAGE_PIXELS."""
    return PrunefxError(f"image {printable(str(path))} declares {declared} pixels, more than the limit of "
                        f"{MAX_IMAGE_PIXELS:,} (shrink or remove the file)")


def open_image(path: str | Path) -> Image.Image:
    """The image at `path` decoded to RGB by PIL (see the module docstring for the checks)."""
    _, image = _checked_bytes(path)
    try:
        image = ImageOps.exif_transpose(image)
        if image.mode in _WIDE_GRAY:
            wide = np.asarray(image).astype(np.int64)
            image = Image.fromarray((np.clip(wide, 0, 65535) >> 8).astype(np.uint8), "L")
        return image.convert("RGB")
    except DECODE_ERRORS as error:
        raise PrunefxError(f"cannot read image {printable(str(path))}: {decode_error_text(error)} "
                           "(remove or replace the file)") from None


def read_image(path: str | Path) -> torch.Tensor:
    """The image at `path` decoded to RGB uint8 (3 x H x W), by PIL as `open_image` decodes it."""
    pixels = np.asarray(open_image(path))  # H x W x 3, uint8
    return torch.from_numpy(pixels.copy()).permute(2, 0, 1).contiguous()
