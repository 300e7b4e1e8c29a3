"""YOLO detection layout, as Ultralytics reads it: a data yaml

    path: ROOT            # optional; the other folders are relative to it (else to the yaml's folder)
    train: images/train   # a folder of images
    val: images/val
    test: images/test     # optional
    names: [shirt, bag]   # or {0: shirt, 1: bag}

and, for every image `.../images/<split>/NAME.jpg`, its labels in `.../labels/<split>/NAME.txt`: one
object per line, `class x_centre y_centre width height`, the four as fractions of the image's sides.
An image without a label file has no objects (Ultralytics' rule for background images).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

from prunefx.data.samples import SplitFiles, image_size_of, images_in
from prunefx.graph.errors import PrunefxError, first_line
from prunefx.graph.safety.regular_files import read_regular_file

DATA_YAML = "data.yaml"
MAX_TEXT_BYTES = 16 << 20  # a data yaml or one image's label file: far below this


def yaml_file(path: Path) -> Path | None:
    """The data yaml that `path` names (the file itself, or data.yaml in the folder), else None."""
    if path.is_file() and path.suffix in (".yaml", ".yml"):
        return path
    if path.is_dir() and (path / DATA_YAML).is_file():
        return path / DATA_YAML
    return None


def _read_yaml(path: Path) -> dict:
    try:
        content = yaml.safe_load(read_regular_file(path, "YOLO data file", MAX_TEXT_BYTES))
    except (OSError, yaml.YAMLError) as error:
        raise PrunefxError(f"cannot read YOLO data file {path}: {first_line(error)}") from None
    if not isinstance(content, dict):
        raise PrunefxError(f"YOLO data file {path} is not a mapping with train:, val: and names:")
    return content


def class_names(content: dict, path: Path) -> tuple[str, ...]:
    names = content.get("names")
    if isinstance(names, dict) and sorted(names) == list(range(len(names))):
        return tuple(str(names[i]) for i in range(len(names)))
    if isinstance(names, list) and names:
        return tuple(str(name) for name in names)
    raise PrunefxError(f"YOLO data file {path}: names must be a list, or a mapping 0..N-1 -> name")


def labels_path(image: Path) -> Path:
    """Ultralytics' rule: the last `images` folder of the path becomes `labels`, the suffix .txt."""
    parts = list(image.parts)
    if "images" not in parts:
        return image.with_suffix(".txt")
    at = len(parts) - 1 - parts[::-1].index("images")
    return Path(*parts[:at], "labels", *parts[at + 1:]).with_suffix(".txt")


def read_labels(path: Path, classes: int, height: int, width: int) -> np.ndarray:
    """One label file as k x 5 (class, x1, y1, x2, y2) in pixels; a bad line is one line naming it."""
    if not path.exists():
        return np.zeros((0, 5), np.float32)
    rows = []
    text = read_regular_file(path, "YOLO labels", MAX_TEXT_BYTES).decode(errors="replace")
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        try:
            cls, cx, cy, w, h = (float(v) for v in fields)
        except ValueError:
            raise PrunefxError(f"{path}:{number}: expected 'class x y w h', got {line.strip()!r}") from None
        if not cls.is_integer() or not 0 <= cls < classes:
            raise PrunefxError(f"{path}:{number}: class {fields[0]} is outside the {classes} classes 0..{classes - 1}")
        rows.append([cls, (cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height])
    return np.asarray(rows, np.float32).reshape(-1, 5)


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
    root = Path(content.get("path") or data_file.parent)
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
        splits[role] = read_split(root / entry, len(names), data_file)
    return splits, names
