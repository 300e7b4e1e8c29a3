"""Colour masks: a palette file maps each mask colour to a class, for segmentation sets whose masks are RGB
(Cityscapes' colour images, CamVid, most labelling tools' exports) rather than class ids.

    # palette.txt: one class per line, in class-id order: red green blue name
    0 0 0 background
    128 0 0 aeroplane
    224 224 192 ignore        <- the name `ignore`: pixels of this colour are neither trained nor scored

A mask pixel whose colour is not in the palette is bad data: one line naming the mask and the colour, since
guessing a class (or silently ignoring it) would train on wrong labels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from prunefx.data.dataset_files import quoted, read_text
from prunefx.graph.errors import PrunefxError, printable

PALETTE_FILE = "palette.txt"
IGNORE_NAME = "ignore"


def _code(rgb: np.ndarray) -> np.ndarray:
    """One int per colour: 0xRRGGBB."""
    rgb = rgb.astype(np.int64)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


class Palette:
    """Colour -> class id; colours named `ignore` map to `ignore_id`."""

    def __init__(self, colours: list[tuple[int, int, int]], names: list[str], ignore_id: int, source: str):
        self.names = tuple(name for name in names if name != IGNORE_NAME)
        ids, next_id = [], 0
        for name in names:
            ids.append(ignore_id if name == IGNORE_NAME else next_id)
            next_id += name != IGNORE_NAME
        codes = _code(np.array(colours, dtype=np.int64))
        order = np.argsort(codes)
        self.codes, self.class_ids, self.source = codes[order], np.array(ids, dtype=np.int64)[order], source

    def ids(self, rgb: np.ndarray, path: Path) -> np.ndarray:
        """H x W x 3 colours -> H x W class ids; a colour not in the palette is one line naming `path`."""
        codes = _code(rgb)
        where = np.clip(np.searchsorted(self.codes, codes), 0, len(self.codes) - 1)
        unknown = self.codes[where] != codes
        if unknown.any():
            y, x = np.argwhere(unknown)[0]
            r, g, b = (int(v) for v in rgb[y, x])
            raise PrunefxError(f"mask {printable(str(path))} has colour ({r}, {g}, {b}) at x={x}, y={y}, which "
                               f"{self.source} does not list")
        return self.class_ids[where]


def _parse_line(line: str, number: int, path: Path) -> tuple[tuple[int, int, int], str]:
    fields = line.split(maxsplit=3)
    try:
        colour = tuple(int(v) for v in fields[:3])
    except ValueError:
        colour = ()
    if len(fields) != 4 or len(colour) != 3 or not all(0 <= v <= 255 for v in colour):
        raise PrunefxError(f"{printable(str(path))}:{number}: expected 'red green blue name' (0-255 each), "
                           f"got {quoted(line)}")
    return colour, fields[3].strip()


def read_palette(path: Path, ignore_id: int, root: Path | None = None) -> Palette:
    """The palette file at `path` (see the module docstring); one a data set holds must lie inside its folder
    `root` (one the user names, `root` None, is read wherever it is)."""
    if not path.is_file():
        raise PrunefxError(f"palette file {printable(str(path))} does not exist")
    text = read_text(path, root, "palette file")
    # `#` starts a comment, at the start of a line or after an entry ("255 255 255 ignore  # borders")
    lines = [(number, line.split("#", 1)[0]) for number, line in enumerate(text.splitlines(), 1)]
    entries = [_parse_line(line, number, path) for number, line in lines if line.strip()]
    colours = [colour for colour, _ in entries]
    if len(entries) < 2:
        raise PrunefxError(f"{printable(str(path))} lists {len(entries)} colour; segmentation needs at least 2")
    seen: set[tuple[int, int, int]] = set()
    repeated: set[tuple[int, int, int]] = set()
    for colour in colours:  # a set, not colours.count: 100,000 colours in linear time
        (repeated if colour in seen else seen).add(colour)
    if repeated:
        raise PrunefxError(f"{printable(str(path))} lists colour {min(repeated)} twice")
    palette = Palette(colours, [name for _, name in entries], ignore_id, printable(str(path)))
    if len(palette.names) < 2:
        raise PrunefxError(f"{printable(str(path))} names {len(palette.names)} class; segmentation needs at least 2")
    return palette
