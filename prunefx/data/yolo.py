"""YOLO detection layout, as Ultralytics reads it: a data yaml (`path`, `train`, `val`, optional `test`,
`names`) and, for every `.../images/<split>/NAME.jpg`, its labels in `.../labels/<split>/NAME.txt`, one
object per line, `class x_centre y_centre width height` as fractions of the image's sides; an image
without a label file has no objects (Ultralytics' rule for background images).

The yaml is read without aliases or tags (prunefx/data/dataset_files.py); a label file must lie, links
followed, inside the folder that holds its `labels` folder, and every number must be finite, width and
height positive, all four fractions from 0 to 1. See docs/your-data.md.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from prunefx.data.dataset_files import MAX_TEXT_BYTES, confined, load_yaml, quoted, read_text
from prunefx.data.samples import SplitFiles, image_size_of, images_in
from prunefx.graph.errors import PrunefxError, printable
from prunefx.graph.safety.regular_files import read_regular_file

DATA_YAML = "data.yaml"
FRACTION_TOLERANCE = 0.01  # rounding in labelling tools' exports; Ultralytics refuses coordinates above 1


def yaml_file(path: Path) -> Path | None:
    """The data yaml that `path` names (the file itself, or data.yaml in the folder), else None."""
    if path.is_file() and path.suffix in (".yaml", ".yml"):
        return path
    if path.is_dir() and (path / DATA_YAML).is_file():
        return confined(path / DATA_YAML, path, "YOLO data file")
    return None


def _read_yaml(path: Path) -> dict:
    content = load_yaml(read_regular_file(path, "YOLO data file", MAX_TEXT_BYTES), path, "YOLO data file")
    if not isinstance(content, dict):
        raise PrunefxError(f"YOLO data file {path} is not a mapping with train:, val: and names:")
    return content


def class_names(content: dict, path: Path) -> tuple[str, ...]:
    names = content.get("names")
    if isinstance(names, dict) and set(names) == set(range(len(names))) and all(type(k) is int for k in names):
        names = [names[i] for i in range(len(names))]
    if isinstance(names, list) and names and all(isinstance(name, (str, int, float)) for name in names):
        return tuple(printable(str(name)) for name in names)
    raise PrunefxError(f"YOLO data file {path}: names must be a list, or a mapping 0..N-1 -> name")


def labels_path(image: Path) -> Path:
    """Ultralytics' rule: the last `images` folder of the path becomes `labels`, the suffix .txt."""
    parts = list(image.parts)
    if "images" not in parts:
        return image.with_suffix(".txt")
    at = len(parts) - 1 - parts[::-1].index("images")
    return Path(*parts[:at], "labels", *parts[at + 1:]).with_suffix(".txt")


def read_labels(path: Path, classes: int, height: int, width: int, root: Path | None = None) -> np.ndarray:
    """One label file as k x 5 (class, x1, y1, x2, y2) in pixels; a bad line is one line naming it. The file
    must lie inside `root` (default: the folder holding its `labels` folder)."""
    if not os.path.lexists(path):
        return np.zeros((0, 5), np.float32)
    rows = []
    text = read_text(path, root if root is not None else _labels_root(path), "YOLO labels")
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        where = f"{printable(str(path))}:{number}"
        try:
            cls, cx, cy, w, h = (float(v) for v in fields)
        except ValueError:
            raise PrunefxError(f"{where}: expected 'class x y w h', got {quoted(line)}") from None
        if not all(math.isfinite(v) for v in (cx, cy, w, h)) or w <= 0 or h <= 0:
            raise PrunefxError(f"{where}: a box needs finite numbers and a positive width and height, got "
                               f"{quoted(line)}")
        if not all(0 <= v <= 1 + FRACTION_TOLERANCE for v in (cx, cy, w, h)):
            raise PrunefxError(f"{where}: x, y, width and height are fractions of the image's sides (0 to 1), got "
                               f"{quoted(line)}")
        if not cls.is_integer() or not 0 <= cls < classes:
            raise PrunefxError(f"{where}: class {printable(fields[0])[:40]} is outside the {classes} classes "
                               f"0..{classes - 1}")
        rows.append([cls, (cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height])
    return np.asarray(rows, np.float32).reshape(-1, 5)


def _labels_root(labels: Path) -> Path:
    """The folder holding the `labels` folder of a label file's path (the file's own folder without one)."""
    parts = list(labels.parts)
    if "labels" not in parts:
        return labels.parent
    return Path(*parts[:len(parts) - 1 - parts[::-1].index("labels")])


def read_split(folder: Path, classes: int, source: Path) -> SplitFiles:
    images = images_in(folder)
    split = SplitFiles(images, f"{folder} (from {source})", boxes=[])
    for image in images:
        height, width = image_size_of(image)  # YOLO boxes are fractions: the size is needed to read them
        split.boxes.append(read_labels(labels_path(image), classes, height, width))
    return split


def yolo_splits(path: Path) -> tuple[dict[str, SplitFiles], tuple[str, ...]]:
    """role -> split, and the class names, of the data yaml at (or in) `path`."""
    data_file = yaml_file(path)
    if data_file is None:
        raise PrunefxError(f"{path} is not a YOLO data yaml, nor a folder holding {DATA_YAML}")
    content = _read_yaml(data_file)
    names = class_names(content, data_file)
    root_entry = content.get("path") or "."  # relative: to the data file's folder
    if not isinstance(root_entry, (str, Path)):
        raise PrunefxError(f"YOLO data file {printable(str(data_file))}: path: must be a folder, not "
                           f"{type(root_entry).__name__}")
    root = Path(root_entry)
    root = root if root.is_absolute() else data_file.parent / root
    splits = {}
    for role in ("train", "val", "test"):
        entry = content.get(role)
        if entry is None:
            if role == "train" or (role == "val" and content.get("test") is None):
                raise PrunefxError(f"YOLO data file {data_file} has no {role}: folder")
            continue
        if not isinstance(entry, str):
            raise PrunefxError(f"YOLO data file {data_file}: {role}: must be one folder of images")
        folder = root / entry
        if not Path(entry).is_absolute() and ".." not in Path(entry).parts and folder.is_dir():
            confined(folder, root, "YOLO image folder")  # a folder inside the root that links out of it
        splits[role] = read_split(folder, len(names), data_file)
    return splits, names
