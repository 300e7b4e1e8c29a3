"""Stored pixels to model input: the one normalising arithmetic of every data route (normalise), the batch
transform that applies it (NormalizeBatch), and the per-channel statistics that images read from disk, the
offline ImageNet sample and the synthetic scenes are normalised with (pixel_statistics): ImageNet's, unless the
caller names the model's own (normalised_with; the command line's --mean/--std, or a timm model's pretrained
configuration). Fashion-MNIST keeps its own statistics: a gray data set's, not a model's."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Sequence

import torch

from prunefx.graph.errors import PrunefxError
from prunefx.graph.program_metadata import statistics_problem  # a saved Program's record is held to it too

# ImageNet's per-channel statistics (the values timm.data and torchvision's weights use; tests/test_assets.py
# checks them against timm's): written here so that reading data does not import timm, 0.7 s of a start.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Statistics = tuple[tuple[float, ...], tuple[float, ...]]  # (mean, std), one value per channel or one for all

_STATISTICS: contextvars.ContextVar[Statistics] = contextvars.ContextVar("prunefx_pixel_statistics",
                                                                         default=(IMAGENET_MEAN, IMAGENET_STD))


def pixel_statistics(channels: int = 3) -> tuple[list[float], list[float]]:
    """The mean and std of each of `channels` channels that images are normalised with (see the module
    docstring); a gray image takes the average of RGB statistics, a single value stands for every channel."""
    mean, std = _STATISTICS.get()
    if len(mean) == channels:
        return list(mean), list(std)
    if len(mean) == 1:
        return list(mean) * channels, list(std) * channels
    if channels == 1:
        return [sum(mean) / len(mean)], [sum(std) / len(std)]
    raise PrunefxError(f"the pixel statistics give {len(mean)} channels' mean and std, the images have {channels}")


@contextlib.contextmanager
def normalised_with(mean: Sequence[float], std: Sequence[float]) -> Iterator[None]:
    """Images read inside the block (data sets, calibration folders, the offline samples) are normalised with
    `mean` and `std`: one value per channel, or one for all."""
    token = _STATISTICS.set(checked_statistics(mean, std))
    try:
        yield
    finally:
        _STATISTICS.reset(token)


def checked_statistics(mean: Sequence[float], std: Sequence[float]) -> Statistics:
    """(mean, std) as tuples of floats, or a one-line PrunefxError where statistics_problem finds one."""
    try:
        mean, std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
    except (TypeError, ValueError) as error:
        raise PrunefxError(f"pixel mean and std must be numbers ({error})") from None
    problem = statistics_problem(mean, std)
    if problem is not None:
        raise PrunefxError(f"pixel statistics: {problem}")
    return mean, std


def normalise(pixels: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, scale: float = 1 / 255) -> torch.Tensor:
    """(pixels * scale - mean) / std in float32: the one arithmetic of every route (batches in memory, files
    read by workers), so that the same pixels give the same bits whichever way they came. `x / 255` and
    `x * (1 / 255)` differ in the last bit for 8 % of pixels, and training amplifies that: the LR-ASPP dense
    run through the files ended its second epoch 1.8 points away from the in-memory run (dense_tasks_ondisk.md)."""
    return (pixels.float() * scale - mean) / std


class NormalizeBatch:
    """Stored images (e.g. uint8) -> float model input: scale, normalise per channel, and repeat a
    single gray channel `channels` times for models that want RGB."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], *, scale: float = 1 / 255,
                 channels: int | None = None):
        self.mean = torch.tensor(mean, dtype=torch.float32)[:, None, None]
        self.std = torch.tensor(std, dtype=torch.float32)[:, None, None]
        self.scale = scale
        self.channels = channels

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        images = normalise(images, self.mean, self.std, self.scale)
        if self.channels and self.channels != images.shape[1]:
            # repeat, not expand: a model may write into its input in place.
            images = images.repeat(1, self.channels // images.shape[1], 1, 1)
        return images
