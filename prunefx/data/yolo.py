"""YOLO detection layout, as Ultralytics reads it: a data yaml (`path`, `train`, `val`, optional `test`,
`names`) and, for every `.../images/<split>/NAME.jpg`, its labels in `.../labels/<split>/NAME.txt`, one
object per line, `class x_centre y_centre width height` as fractions of the image's sides; an image
without a label file has no objects (Ultralytics' rule for background images).

A split is a folder (read with its sub-folders), a .txt list of images or a list of those; the labels rule
looks only at the path below the data folder (`path:`, else the yaml's folder). The yaml is read without
aliases or tags (prunefx/data/dataset_files.py); an image or label file must lie, links followed, inside
the data folder (for a folder the yaml names outside it: that folder, and the folder holding the `labels`
folder), and every number must be finite, width and height positive, all four fractions from 0 to 1.
See docs/your-data.md.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import numpy as np

from prunefx.data.dataset_files import MAX_TEXT_BYTES, confined, load_yaml, quoted, read_text
from prunefx.data.image_files import IMAGE_SUFFIXES
from prunefx.data.samples import SplitFiles, UnlabelledSplit, image_size_of, images_in
from prunefx.graph.errors import PrunefxError, printable
from prunefx.graph.safety.regular_files import read_regular_file

_log = logging.getLogger(__name__)

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


def labels_path(image: Path, root: Path | None = None) -> Path:
    """Ultralytics' rule: the last `images` folder of the path becomes `labels`, the suffix .txt. With `root`
    (the data folder), only the path from `root` to the image is looked at (`../other/images/...` for a
    folder the yaml names outside it): a folder named `images` above the data set (`~/images/proj/ds/
    train/0.png`) would otherwise send the labels out of it, and only when the data set was named by a
    path that spells that folder (an absolute one, not a relative one)."""
    if root is None:
        return _images_to_labels(image)
    below = Path(os.path.relpath(os.path.abspath(image), os.path.abspath(root)))
    return root / _images_to_labels(below)


def _images_to_labels(image: Path) -> Path:
    parts = list(image.parts)
    if "images" not in parts[:-1]:
        return image.with_suffix(".txt")
    at = len(parts) - 2 - parts[-2::-1].index("images")
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


def _lies_in(path: Path, root: Path) -> bool:
    """Whether `path` as spelled (`..` taken away lexically, no link followed) lies inside `root`."""
    path_text, root_text = os.path.abspath(path), os.path.abspath(root)
    return os.path.commonpath([path_text, root_text]) == root_text


def _entry_path(root: Path, entry: str) -> Path:
    path = root / entry
    # Roboflow exports write `train: ../train/images` in a data.yaml that lies beside train/; Ultralytics reads
    # such an entry from the data folder itself when the `../` path does not exist, and so does prunefx
    if entry.startswith("../") and not path.exists():
        path = root / entry[3:]
    return path


def _listed_images(listing: Path, root: Path) -> list[Path]:
    """The images a .txt list names, one a line: `./NAME` read from the list's folder (Ultralytics' rule) or
    an absolute path; the list and every image must lie inside the data folder, links followed."""
    if not _lies_in(listing, root):
        raise PrunefxError(f"YOLO image list {printable(str(listing))} lies outside the data folder "
                           f"{printable(str(root))} (image lists are read only inside it)")
    text = read_text(listing, root, "YOLO image list")
    images = []
    for number, line in enumerate(text.removeprefix("\ufeff").splitlines(), 1):
        name = line.strip()
        if not name:
            continue
        where = f"{printable(str(listing))}:{number}"
        if name.startswith("./"):
            path = listing.parent / name[2:]
        elif os.path.isabs(name):
            path = Path(name)
        else:  # Ultralytics reads these from the current folder: the data set would change with where prunefx runs
            raise PrunefxError(f"{where}: {quoted(name)} is neither ./NAME (read from the list's folder) nor an "
                               "absolute path")
        if not name.lower().endswith(IMAGE_SUFFIXES):  # Ultralytics drops such lines unsaid
            raise PrunefxError(f"{where}: {quoted(name)} is not an image file ({' '.join(IMAGE_SUFFIXES)})")
        if not _lies_in(path, root):
            raise PrunefxError(f"{where}: image {quoted(name)} lies outside the data folder {printable(str(root))}")
        try:
            confined(path, root, "YOLO image")
        except PrunefxError as error:
            raise PrunefxError(f"{where}: {error}") from None
        if not path.exists():
            raise PrunefxError(f"{where}: image {quoted(name)} does not exist")
        images.append(path)
    return images


def _images_of(entry: str, root: Path, data_file: Path, role: str) -> list[tuple[Path, Path | None]]:
    """(image, the folder its files must lie in) for every image one train:/val:/test: entry names: a folder,
    read with its sub-folders as Ultralytics does, or a .txt list of images. That folder is the data folder
    `root`, or None for a folder the yaml names elsewhere (an absolute path or `../`): images must then lie
    in that folder, labels in the one holding their labels/ folder."""
    path = _entry_path(root, entry)
    if path.is_dir():
        if _lies_in(path, root):
            # links in it may lead anywhere inside the data folder, a linked folder leading out is refused
            folder = confined(path, root, "YOLO image folder")
            return [(image, root) for image in images_in(folder, within=root, recursive=True)]
        return [(image, None) for image in images_in(path, recursive=True)]
    if path.suffix.lower() == ".txt" and path.is_file():
        return [(image, root) for image in _listed_images(path, root)]
    what = "does not exist" if not path.exists() else "is neither a folder of images nor a .txt list of images"
    raise PrunefxError(f"YOLO data file {printable(str(data_file))}: {role}: {printable(str(path))} {what}")


def read_split(images: list[tuple[Path, Path | None]], classes: int, root: Path, source: str) -> SplitFiles:
    """The split of `images` (each with the folder its files must lie in, see `_images_of`) and their
    labels, found from the data folder `root`; a split where not one image has a label file is refused
    (UnlabelledSplit): its labels are elsewhere (Ultralytics refuses it for training too), and read as
    background it would train and score on nothing."""
    split = SplitFiles([image for image, _ in images], source, boxes=[])
    found = 0
    for image, within in images:
        height, width = image_size_of(image)  # YOLO boxes are fractions: the size is needed to read them
        labels = labels_path(image, root)
        found += os.path.lexists(labels)
        split.boxes.append(read_labels(labels, classes, height, width, within))
    if not found:
        image = images[0][0]
        raise UnlabelledSplit(f"{source}: none of its {len(images)} images has a label file (for "
                           f"{printable(str(image))}: {printable(str(labels_path(image, root)))}); YOLO reads "
                           ".../images/<split>/NAME.jpg's labels from .../labels/<split>/NAME.txt, else from "
                           "NAME.txt beside the image")
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
        entries = entry if isinstance(entry, list) else [entry]
        if not entries or not all(isinstance(one, str) and one for one in entries):
            raise PrunefxError(f"YOLO data file {data_file}: {role}: must be a folder of images, a .txt list of "
                               "images, or a list of those")
        images = sorted((pair for one in entries for pair in _images_of(one, root, data_file, role)),
                        key=lambda pair: pair[0])  # Ultralytics sorts the images of all entries together
        source = str(_entry_path(root, entries[0])) if len(entries) == 1 else f"{role}: {', '.join(entries)}"
        try:
            splits[role] = read_split(images, len(names), root, printable(f"{source} (from {data_file})"))
        except UnlabelledSplit as error:
            if role != "test":
                raise
            # a benchmark's test split often has no labels (COCO's test-dev): the rest of the data still serves
            _log.warning(f"the test split is left out: {error}")

    return splits, names
