"""The command line's --mean/--std (made in prunefx/cli/flags.py): the per-channel statistics the images a
command reads (calibration data, a data set) are normalised with. Given, they win, and the Program the command
writes records them; else the model's own (a timm model's pretrained configuration, or what a saved Program
records); else ImageNet's (prunefx/data/normalise.py). Fashion-MNIST is normalised with its own statistics, so
they do not apply to it."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import replace
from typing import TYPE_CHECKING

from prunefx.data import fashion_mnist
from prunefx.data.fashion_mnist import NAME as FASHION_MNIST
from prunefx.data.normalise import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Statistics,
    checked_statistics,
    normalised_with,
    pixel_statistics,
)
from prunefx.graph.errors import PrunefxError

if TYPE_CHECKING:
    import torch

    from prunefx.data.calibration import Calibration
    from prunefx.graph import Program

log = logging.getLogger("prunefx")


def given_statistics(args, data: str | None) -> Statistics | None:
    """--mean/--std, checked, or None where not given. `data`: what the command reads, refused with them
    where that is Fashion-MNIST."""
    mean, std = getattr(args, "mean", None), getattr(args, "std", None)
    if (mean is None) != (std is None):
        raise PrunefxError("--mean and --std go together: give both")
    if mean is None:
        return None
    if str(data) == FASHION_MNIST:
        raise PrunefxError(f"{FASHION_MNIST} is normalised with its own statistics: --mean/--std apply to "
                           "natural images (a data set on disk, a folder of images, imagenet-sample)")
    return checked_statistics(mean, std)


def record_given_statistics(args, program: Program) -> None:
    """--mean/--std, where given, as `program`'s normalisation: the files written from it record them, whether
    or not the command reads images (--calibrate)."""
    given = given_statistics(args, getattr(args, "calibrate", None))
    if given is not None:
        program.normalisation = given


def statistics(args, known: Statistics | None, data: str | None) -> tuple[Statistics, str]:
    """(mean, std) and where they come from, in words: --mean/--std, else `known` (the model's), else
    ImageNet's."""
    given = given_statistics(args, data)
    if given is not None:
        return given, "--mean/--std"
    if known is not None:
        return known, "the model's own"
    return (IMAGENET_MEAN, IMAGENET_STD), "ImageNet's (the default)"


def statistics_read(data: str, known: Statistics | None) -> Statistics:
    """The statistics the images of `data` were normalised with for a model that names `known`: Fashion-MNIST's
    own, else `known`, else ImageNet's (compress's report.json)."""
    if str(data) == FASHION_MNIST:
        return (fashion_mnist.MEAN,), (fashion_mnist.STD,)
    return known or (IMAGENET_MEAN, IMAGENET_STD)


def describe(stats: Statistics) -> str:
    mean, std = stats
    return f"mean {', '.join(f'{v:g}' for v in mean)}, std {', '.join(f'{v:g}' for v in std)}"


def calibration_read(args, program: Program | None, example: torch.Tensor) -> Calibration:
    """--calibrate's images (--calibration-images of them, 256 where the command has no such flag) in batches of
    `example`'s shape, normalised as images_normalised says."""
    from prunefx.data.calibration import calibration_data

    with images_normalised(args, program, args.calibrate):
        calibration = calibration_data(args.calibrate, example, getattr(args, "calibration_images", 256))
        if str(args.calibrate) == FASHION_MNIST:
            return calibration
        # the report's words name the statistics too
        return replace(calibration, description=f"{calibration.description}, normalised with "
                                                f"{describe(pixel_statistics())}")


@contextlib.contextmanager
def images_normalised(args, program: Program | None, data: str | None) -> Iterator[None]:
    """Images read inside the block are normalised as `statistics` says; given on the command line, the
    statistics become `program`'s, so that the files written from it record them."""
    stats, source = statistics(args, program.normalisation if program is not None else None, data)
    if program is not None and getattr(args, "mean", None) is not None:
        program.normalisation = stats
    if data is not None and str(data) != FASHION_MNIST:
        log.info("images normalised with %s: %s", describe(stats), source)
    with normalised_with(*stats):
        yield
