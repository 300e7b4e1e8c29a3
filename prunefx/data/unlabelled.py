"""Unlabelled images (`--data-format images`): recovery by distillation alone, for users with no labels at hand.

    ROOT/train/**/*.jpg   images to distil on (any sub-folders)
    ROOT/val/**/*.jpg     images to measure on (and/or ROOT/test/)

Training batches carry label -1 everywhere, so the trainer's task term is empty and the compressed model
learns only from the dense teacher (knowledge distillation). There is no ground truth to score against:
the evaluation splits are labelled with the *dense model's own predictions* (top-1 class, per pixel for a
segmentation output), so the reported accuracy is the compressed model's agreement with the dense model,
100 % for the dense model itself; reports say so in their data line. Detectors are refused: their
predictions are boxes, which this agreement does not cover.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from prunefx.data.batches import IGNORED_LABEL, StaticBatches
from prunefx.data.dataset_files import confined
from prunefx.data.image_files import image_files
from prunefx.data.samples import LabelledImages, SplitFiles, check_headers
from prunefx.data.splits import CLASSIFICATION, DataSplits
from prunefx.graph import Program
from prunefx.graph.errors import PrunefxError
from prunefx.passes.training.losses import logits_of

REAL_IMAGE = 0  # the placeholder label of a real evaluation image, replaced by the dense prediction


def unlabelled_data(path: Path, batch_size: int, *, image_size: int | tuple[int, int] | None, channels: int,
                    seed: int, num_workers: int) -> DataSplits:
    """Streamed splits of unlabelled images, resized to `image_size` (default: the first training image's)."""
    roles = [role for role in ("train", "val", "test") if (path / role).is_dir()]
    if "train" not in roles or len(roles) < 2:
        raise PrunefxError(f"unlabelled images {path} need train/ and val/ (or test/) folders of images")
    # links in a split may lead anywhere inside the data folder
    splits = {role: SplitFiles(image_files(confined(path / role, path, "image folder"), within=path), str(path / role))
              for role in roles}
    first = check_headers(splits["train"])
    for split in splits.values():
        check_headers(split)
    size = first if image_size is None else (image_size, image_size) if isinstance(image_size, int) else image_size
    loaders = {role: StaticBatches(LabelledImages(split, size=tuple(size), channels=channels,
                                                  unlabelled=IGNORED_LABEL if role == "train" else REAL_IMAGE),
                                   batch_size, shuffle=role == "train", seed=seed, num_workers=num_workers)
               for role, split in splits.items()}
    # no classes yet: the dense model's output decides them (against_dense)
    return DataSplits(loaders["train"], loaders.get("val"), loaders.get("test"), (), (channels, *tuple(size)),
                      CLASSIFICATION)


class DenseLabels:
    """An evaluation loader whose real images are labelled with `dense`'s predictions (padding stays -1).

    The labels of a batch are the same at every pass (an evaluation loader reads its images in order), so the
    first pass keeps them, up to KEPT_LABEL_BYTES, and a later one (each stage's score, the final one) reads
    them instead of running the dense model, on the CPU, again beside the model it scores."""

    describes = "the dense model's own predictions (unlabelled images: scores are agreement with the dense model)"

    def __init__(self, loader, dense: Program):
        self.loader, self.dense = loader, dense
        self._kept: list[torch.Tensor] = []  # each batch's labels in loader order, as compact integers

    def __len__(self) -> int:
        return len(self.loader)

    @torch.no_grad()
    def __iter__(self):
        for index, (images, labels) in enumerate(self.loader):
            real = labels != IGNORED_LABEL
            kept = self._kept[index] if index < len(self._kept) else None
            if kept is not None and kept.shape[0] == real.shape[0] and torch.equal(kept != IGNORED_LABEL,
                                                                                    _spread(real, kept)):
                yield images, kept.long()
                continue
            predicted = logits_of(self.dense.module(images)).argmax(1)
            labelled = torch.where(_spread(real, predicted), predicted, torch.full_like(predicted, IGNORED_LABEL))
            room = _kept_bytes(self._kept) + labelled.numel() * 2 <= KEPT_LABEL_BYTES
            if index == len(self._kept) and room and int(labelled.max()) < 2 ** 15:
                self._kept.append(labelled.to(torch.int16))
            yield images, labelled


KEPT_LABEL_BYTES = 256 << 20  # a segmenter's labels are one per pixel: beyond this, predicted again at each pass


def _spread(real: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The per-image mask `real` in the shape of `like` (per pixel for a segmenter's labels)."""
    return real.view(-1, *[1] * (like.dim() - 1)).expand_as(like)


def _kept_bytes(kept: list[torch.Tensor]) -> int:
    return sum(labels.numel() * 2 for labels in kept)  # int16


def against_dense(dense: Program, splits: DataSplits) -> DataSplits:
    """`splits` of unlabelled images with evaluation labels from `dense` and its output's classes."""
    shapes = dense.output_shapes
    if not shapes or len(shapes[0]) not in (2, 4):
        raise PrunefxError(f"{dense.name} outputs {shapes[0] if shapes else 'nothing'}: unlabelled images are "
                           "scored by agreement with a classifier (N x classes) or segmenter (N x classes x H x W)")
    dense = dense.clone().eval()
    val, test = (DenseLabels(loader, dense) if loader is not None else None for loader in (splits.val, splits.test))
    return dataclasses.replace(splits, val=val, test=test, classes=tuple(str(i) for i in range(shapes[0][1])),
                               labelled=False)
