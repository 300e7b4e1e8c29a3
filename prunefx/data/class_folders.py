"""Users' images in torchvision's ImageFolder layout (`split/<class name>/*`), one split as a Dataset whose
class indices are the training split's. Its own file, imported when such a folder is read: torchvision's
datasets import its models and torch's compiler, two seconds of every prunefx start that reads no folder."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from torchvision.datasets import ImageFolder

from prunefx.data.image_files import class_folder_samples, image_files, open_image
from prunefx.graph.errors import PrunefxError, printable

_log = logging.getLogger(__name__)


class _FolderWithClasses(ImageFolder):
    """An ImageFolder whose class indices are the training split's, so that a validation folder
    lacking a class does not shift the labels of the classes after it."""

    def __init__(self, root: Path, classes: Sequence[str], **kwargs):
        self._fixed_classes = list(classes)
        super().__init__(str(root), allow_empty=True, loader=open_image, **kwargs)

    def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
        return self._fixed_classes, {name: i for i, name in enumerate(self._fixed_classes)}

    @staticmethod
    def make_dataset(directory, class_to_idx, extensions=None, is_valid_file=None, allow_empty=False):
        # torchvision's walk follows every symlinked folder (a link to .. never ends); ours follows none
        return class_folder_samples(directory, class_to_idx)


def class_folders(split: Path) -> list[str]:
    """The sorted class folder names of one split; none is an error that says the layout."""
    classes = sorted(entry.name for entry in split.iterdir() if entry.is_dir())
    if not classes:
        raise PrunefxError(f"{split} holds no class folders: put each class's images in "
                           f"{split}/<class name>/")
    return classes


def class_folder_split(split: Path, classes: Sequence[str], transform) -> ImageFolder:
    """One split's images with `classes`' indices, each through `transform`; a class folder `classes` lacks,
    or no image at all, is an error."""
    extra = sorted(set(class_folders(split)) - set(classes))
    if extra:
        raise PrunefxError(f"{split} has classes that train/ lacks: {', '.join(extra)}")
    folder = _FolderWithClasses(split, classes, transform=transform)
    if not folder.samples:
        raise PrunefxError(f"{split} holds no images in its class folders")
    _warn_of_loose_images(split)
    return folder


def _warn_of_loose_images(split: Path) -> None:
    """Images lying in the split itself, beside its class folders, have no class: said, not read."""
    loose = image_files(split, recursive=False)
    if loose:
        _log.warning(f"{printable(str(split))} holds {len(loose)} image(s) outside its class folders (e.g. "
                     f"{printable(loose[0].name)}); they have no class and are not read")
