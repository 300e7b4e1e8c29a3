"""`--data fashion-mnist-seg[:SIZE]` / `fashion-mnist-det[:SIZE]`: the Fashion-MNIST scenes as files, read
back by the code that reads users' data (prunefx/data/formats.py), so our own figures take their path.

The scenes are composed (prunefx/data/fashion_mnist_scenes.py), written once as mask folders (segmentation) or
COCO JSON (detection, whose [x, y, w, h] keeps the pixel boxes exact) under a cache folder named by
everything that decides their content, and read from there on every later run:
$PRUNEFX_CACHE_DIR, else $XDG_CACHE_HOME/prunefx, else ~/.cache/prunefx (graph/cache_folder.py), then
scenes/<key>/.
A folder is written beside its final name and renamed into place, so a run never reads a half-written
one and two runs racing to write it both end up reading one complete copy. Its manifest (scenes.json) lists
every file with its size: a folder whose files differ (one deleted or truncated since) is written anew.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

from prunefx.data import fashion_mnist, fashion_mnist_scenes
from prunefx.data.formats import COCO, MASKS, format_data
from prunefx.data.scene_files import write_scenes
from prunefx.data.splits import DETECTION, SEGMENTATION, DataSplits, split_train_validation
from prunefx.graph.cache_folder import cache_root
from prunefx.graph.errors import PrunefxError, first_line
from prunefx.graph.whole_files import WRITER, writer_gone, writer_tag

_LAYOUT = {SEGMENTATION: MASKS, DETECTION: COCO}
_VERSION = 2  # of the written layout: bump when scene_files.py writes something else
MANIFEST = "scenes.json"
_log = logging.getLogger(__name__)


def _source_stamp(root: str | Path | None) -> list:
    """The item files the scenes are drawn from, by path, size and modification time."""
    folder = Path(root or os.environ.get(fashion_mnist.ROOT_ENV) or fashion_mnist.DEFAULT_ROOT)
    stamp = []
    for path in sorted(folder.glob("*-ubyte.gz")):
        status = path.stat()
        stamp.append([str(path.resolve()), status.st_size, status.st_mtime_ns])
    return stamp


def compose_scenes(counts: dict[str, int], validation: int, config, seed: int, root=None) -> dict:
    """split -> Scenes: `counts[split]` canvases of each split, items held out for val as in `scene_data`."""
    train_items, train_classes = fashion_mnist.load_fashion_mnist("train", root)
    test_items, test_classes = fashion_mnist.load_fashion_mnist("test", root)
    train_index, val_index = split_train_validation(len(train_items), validation, seed)
    pools = {"train": (train_items[train_index], train_classes[train_index]), "test": (test_items, test_classes),
             "val": (train_items[val_index], train_classes[val_index])}
    return {split: fashion_mnist_scenes.make_scenes(*pools[split], count, split=split, config=config, seed=seed)
            for split, count in counts.items()}


def scene_folder(task: str, counts: dict[str, int], validation: int, config, seed: int, root=None) -> Path:
    """The folder holding these scenes in their task's layout, written now if no run wrote it before."""
    key = json.dumps([_VERSION, task, counts, validation, dataclasses.asdict(config), seed, _source_stamp(root)],
                     sort_keys=True)
    folder = cache_root() / "scenes" / hashlib.sha256(key.encode()).hexdigest()[:16]
    if folder.is_dir():
        if _intact(folder):
            return folder
        _log.warning("the scenes in %s are not the files written there (one missing or changed): written anew",
                     folder)
        _set_aside(folder)
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        _remove_killed_writers(folder)
        staging = Path(tempfile.mkdtemp(prefix=_staging_prefix(folder), dir=folder.parent))
    except OSError as error:
        raise PrunefxError(f"cannot write the scenes under {folder.parent}: {first_line(error)} "
                           f"(set PRUNEFX_CACHE_DIR to a writable folder)") from None
    try:
        write_scenes(compose_scenes(counts, validation, config, seed, root), staging, _LAYOUT[task])
        # what the folder holds, for whoever looks, and every file with its size, checked on each later run
        (staging / MANIFEST).write_text(json.dumps({"key": json.loads(key), "files": _files(staging)}) + "\n")
        os.rename(staging, folder)
    except OSError:
        if not folder.is_dir():  # not a lost race with another run: a real failure
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def _files(folder: Path) -> list[list]:
    """[path relative to `folder`, size] of every file under it but the manifest, sorted."""
    return sorted([str(path.relative_to(folder)), path.stat().st_size] for path in folder.rglob("*")
                  if path.is_file() and path.name != MANIFEST)


def _intact(folder: Path) -> bool:
    """The folder holds the files its manifest lists, with their sizes, and no others."""
    try:
        listed = json.loads((folder / MANIFEST).read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError, RecursionError):  # RecursionError: nesting json cannot read
        return False
    return listed == _files(folder)


def _staging_prefix(folder: Path) -> str:
    """The start of the name of a folder this process writes beside `folder` (staging it, or setting it aside)."""
    return f".{folder.name}-{writer_tag()}-"


def _remove_killed_writers(folder: Path) -> None:
    """The staging and set-aside folders of earlier runs whose process is gone (killed outright), each as large as
    the scenes: a running writer's stay."""
    pattern = re.compile(re.escape(f".{folder.name}-") + WRITER + "-.+")
    for entry in folder.parent.iterdir():
        found = pattern.fullmatch(entry.name)
        if (found and entry.is_dir() and not entry.is_symlink()
                and writer_gone(found.group(1), int(found.group(2)), entry)):
            shutil.rmtree(entry, ignore_errors=True)


def _set_aside(folder: Path) -> None:
    """Move a damaged folder out of the way (a racing run may do the same: whichever moves it first), then delete it."""
    aside = Path(tempfile.mkdtemp(prefix=f"{_staging_prefix(folder)}damaged-", dir=folder.parent))
    try:
        os.rename(folder, aside / folder.name)
    except OSError:
        pass
    shutil.rmtree(aside, ignore_errors=True)


def scene_data(batch_size: int, *, task: str, size: int, train_canvases: int, val_canvases: int,
               test_canvases: int, validation: int, channels: int, seed: int, root=None, scene: dict | None = None,
               num_workers: int | None = None) -> DataSplits:
    """The scenes' splits, read from their files (see `prunefx.data.load.fashion_mnist_scene_data`)."""
    if task not in _LAYOUT:
        raise PrunefxError(f"scene task must be {SEGMENTATION!r} or {DETECTION!r}, got {task!r}")
    if channels not in (1, 3):
        raise PrunefxError(f"scene channels must be 1 (gray) or 3 (gray repeated), got {channels}")
    try:
        config = fashion_mnist_scenes.SceneConfig(size=size, **(scene or {}))
    except TypeError as error:
        raise PrunefxError(f"bad scene option: {first_line(error)}") from None
    counts = {"train": train_canvases, "test": test_canvases, **({"val": val_canvases} if validation else {})}
    folder = scene_folder(task, counts, validation, config, seed, root)
    return format_data(folder, batch_size, data_format=_LAYOUT[task], channels=channels, seed=seed,
                       num_workers=num_workers)
