"""Batch loaders with static batch sizes for recovery training; the data sets are in prunefx/data/splits.py.

Models are captured with torch.export at a static batch size, so every batch a loader yields has
exactly the loader's batch size:
- training loaders (shuffled) drop the last, incomplete batch;
- evaluation loaders (not shuffled) pad it to full size with copies of real images labelled -1,
  which `accuracy` (and any loss that uses `ignore_index=-1`) leaves out.

Every loader has one interface (`BatchLoader`): iterate for `(float images, int64 labels)`,
`len()` is the number of batches, `set_epoch(epoch)` reshuffles deterministically from
(seed, epoch), and `shard(rank, world_size)` gives one process of a data-parallel run its part of
each *global* batch, so that the shards of global batch i, concatenated in rank order, are global
batch i of the unsharded loader (augmentation included for in-memory data): a 2-process
DistributedDataParallel run then sees the same global batches as a single process.

Two implementations:
- `TensorBatches`: in-memory tensors (Fashion-MNIST, the ImageNet sample), augmented per batch
  with vectorised tensor operations and a seeded torch.Generator; no per-sample Python work;
- `FolderBatches`: a torchvision ImageFolder read through torch's DataLoader (users' own data),
  with each sample's random transform seeded from (seed, epoch, position in the epoch).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from torchvision.datasets import ImageFolder

from prunefx.graph.errors import PrunefxError

IGNORED_LABEL = -1

# Generator streams derived from one (seed, epoch): the sample order must not depend on whether
# augmentation is on, so each gets its own generator.
_ORDER_STREAM, _AUGMENT_STREAM, _SAMPLE_STREAM = 0, 1, 2


def derive_seed(*parts: int) -> int:
    """A 63-bit seed mixed from non-negative integers (seed, epoch, stream, ...). Mixing, unlike
    `seed + epoch`, keeps (seed 0, epoch 1) and (seed 1, epoch 0) apart."""
    state = np.random.SeedSequence([int(p) for p in parts]).generate_state(1, dtype=np.uint64)[0]
    return int(state) >> 1


def _generator(*parts: int) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(*parts))


# ---- the common interface: global batches, padding, sharding --------------------------------------

class BatchLoader:
    """Fixed-size batches of `num_samples` items; subclasses say how the items of a batch are read.

    `batch_size` is what one iteration yields (the global batch size divided by the world size of a
    shard); `global_batch_size` is the batch size of the unsharded loader.
    """

    def __init__(self, num_samples: int, batch_size: int, *, shuffle: bool, seed: int = 0,
                 drop_last: bool | None = None):
        if batch_size < 1:
            raise PrunefxError(f"batch size must be at least 1, got {batch_size}")
        if num_samples < 1:
            raise PrunefxError("a data loader needs at least one image, got none")
        self.num_samples = num_samples
        self.global_batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        # Training drops the incomplete batch (a padded one would weigh repeated images twice);
        # evaluation pads it so that every image is counted.
        self.drop_last = shuffle if drop_last is None else drop_last
        self.epoch = 0
        self.rank, self.world_size = 0, 1
        if len(self) == 0:
            raise PrunefxError(f"{num_samples} images make no full batch of {batch_size}; "
                               f"use a smaller batch size")

    @property
    def batch_size(self) -> int:
        return self.global_batch_size // self.world_size

    def __len__(self) -> int:
        full, rest = divmod(self.num_samples, self.global_batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose order (and augmentation) the next iteration yields."""
        self.epoch = epoch

    def shard(self, rank: int, world_size: int) -> BatchLoader:
        """This rank's part of every global batch: items [rank * b, (rank + 1) * b) of it, where
        b = global batch size / world size."""
        if self.world_size != 1:
            raise PrunefxError("this loader is already a shard; shard the unsharded loader")
        if world_size < 1 or not 0 <= rank < world_size:
            raise PrunefxError(f"rank {rank} is not in a world of {world_size} processes")
        if self.global_batch_size % world_size:
            raise PrunefxError(f"batch size {self.global_batch_size} is not divisible by world size "
                               f"{world_size}: every process needs the same static batch size")
        part = copy.copy(self)
        part.rank, part.world_size = rank, world_size
        return part

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        raise NotImplementedError

    def _order(self) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.num_samples)
        return torch.randperm(self.num_samples, generator=_generator(self.seed, self.epoch, _ORDER_STREAM))

    def _global_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(sample indices, is-real mask) of each global batch, the last one padded with copies of
        its own real images."""
        order, size = self._order(), self.global_batch_size
        for start in range(0, len(self) * size, size):
            indices = order[start:start + size]
            real = torch.ones(size, dtype=torch.bool)
            if len(indices) < size:
                real[len(indices):] = False
                copies = indices[torch.arange(size - len(indices)) % len(indices)]
                indices = torch.cat([indices, copies])
            yield indices, real

    def _rank_part(self) -> slice:
        return slice(self.rank * self.batch_size, (self.rank + 1) * self.batch_size)

    def _describe(self) -> str:
        kind = "shuffled" if self.shuffle else "in order"
        last = "last batch dropped" if self.drop_last else "last batch padded with label -1"
        shard = f", rank {self.rank} of {self.world_size}" if self.world_size > 1 else ""
        return (f"{self.num_samples} images, batch {self.batch_size}, {len(self)} batches, "
                f"{kind}, {last}{shard}")


def _labels_or_ignored(labels: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    # Dense labels (a mask per image, boxes per image) are padded whole: every entry of a copy is -1.
    real = real.view(-1, *[1] * (labels.dim() - 1))
    return torch.where(real, labels, torch.full_like(labels, IGNORED_LABEL))


# ---- in-memory tensors -------------------------------------------------------------------------

class RandomCropFlip:
    """Random crop after zero padding, and random horizontal flip, of a whole N x C x H x W batch.

    `draw` samples the parameters of a batch and `__call__` applies them, so that a sharded loader
    draws for the global batch and applies only its rows: shards then match the unsharded loader.
    Zero is black in the stored (unnormalised) images, as in torchvision's RandomCrop(padding=2).
    """

    def __init__(self, padding: int = 2, flip: bool = True):
        if padding < 0:
            raise PrunefxError(f"crop padding must be non-negative, got {padding}")
        self.padding = padding
        self.flip = flip

    def draw(self, count: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Per image: the crop's top-left corner in the padded image (padding, padding = no shift)
        and whether to flip."""
        span = 2 * self.padding + 1
        return {
            "top": torch.randint(span, (count,), generator=generator),
            "left": torch.randint(span, (count,), generator=generator),
            "flip": (torch.rand(count, generator=generator) < 0.5) & self.flip,
        }

    def __call__(self, images: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        height, width = images.shape[-2:]
        pad = self.padding
        padded = F.pad(images, (pad, pad, pad, pad)) if pad else images
        # Gather every crop at once: rows[n, y] = top[n] + y, columns[n, x] = left[n] + x.
        rows = params["top"][:, None] + torch.arange(height)
        columns = params["left"][:, None] + torch.arange(width)
        batch = torch.arange(len(images))[:, None, None, None]
        channels = torch.arange(images.shape[1])[None, :, None, None]
        cropped = padded[batch, channels, rows[:, None, :, None], columns[:, None, None, :]]
        return torch.where(params["flip"][:, None, None, None], cropped.flip(-1), cropped)

    def __repr__(self) -> str:
        return f"RandomCropFlip(padding={self.padding}, flip={self.flip})"


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
        images = (images.float() * self.scale - self.mean) / self.std
        if self.channels and self.channels != images.shape[1]:
            # repeat, not expand: a model may write into its input in place.
            images = images.repeat(1, self.channels // images.shape[1], 1, 1)
        return images


class TensorBatches(BatchLoader):
    """Batches of in-memory `images` (N x C x H x W, any dtype) and `labels` (N, int64).

    Per batch: gather the images, apply `augment` (e.g. `RandomCropFlip`, drawn from a generator
    seeded by (seed, epoch)), then `prepare` (stored images -> float input; default `.float()`).
    `drop_last=None` drops the incomplete last batch when shuffling (training) and pads it with
    copies of real images labelled -1 otherwise (evaluation); True/False force drop/pad.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, *, shuffle: bool,
                 augment: RandomCropFlip | None = None,
                 prepare: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 seed: int = 0, drop_last: bool | None = None):
        if images.dim() != 4 or len(images) != len(labels):
            raise PrunefxError(f"expected N x C x H x W images and N labels, got images "
                               f"{tuple(images.shape)} and labels {tuple(labels.shape)}")
        super().__init__(len(images), batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last)
        self.images = images
        self.labels = labels.long()
        self.augment = augment
        self.prepare = prepare

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        generator = _generator(self.seed, self.epoch, _AUGMENT_STREAM)
        part = self._rank_part()
        for indices, real in self._global_batches():
            # Drawn for the whole global batch even in a shard, so every rank draws the same numbers.
            params = self.augment.draw(len(indices), generator) if self.augment else None
            indices, real = indices[part], real[part]
            images = self.images[indices]
            if params is not None:
                images = self.augment(images, {name: value[part] for name, value in params.items()})
            images = self.prepare(images) if self.prepare else images.float()
            yield images, _labels_or_ignored(self.labels[indices], real)

    def __repr__(self) -> str:
        augment = f", {self.augment!r}" if self.augment else ""
        return f"TensorBatches({self._describe()}{augment})"


# ---- image folders through torch's DataLoader ----------------------------------------------------

class _SeededSamples(Dataset):
    """Reads items named (index, is_real, seed): the image through the data set's transform, run under
    torch's global generator seeded with `seed` (saved and restored around it), so a random
    transform gives the same result in any process, worker or shard; the label, or -1 for padding
    (every entry of a dense label: a mask, a box table)."""

    def __init__(self, folder: Dataset):
        self.folder = folder

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, item: tuple[int, bool, int]) -> tuple[torch.Tensor, int | torch.Tensor]:
        index, real, seed = item
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            image, label = self.folder[index]
        if not real:
            label = torch.full_like(label, IGNORED_LABEL) if isinstance(label, torch.Tensor) else IGNORED_LABEL
        return image.as_subclass(torch.Tensor), label


class _ShardBatchSampler:
    """DataLoader batch sampler: this rank's part of each global batch, as _SeededSamples items."""

    def __init__(self, loader: FolderBatches):
        self.loader = loader

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[list[tuple[int, bool, int]]]:
        loader, part = self.loader, self.loader._rank_part()
        base = derive_seed(loader.seed, loader.epoch, _SAMPLE_STREAM)
        size = loader.global_batch_size
        for number, (indices, real) in enumerate(loader._global_batches()):
            positions = range(number * size, (number + 1) * size)[part]
            yield [(int(i), bool(r), base + p) for i, r, p in zip(indices[part], real[part], positions)]


class FolderBatches(BatchLoader):
    """Fixed-size batches of a map-style data set on disk (a torchvision ImageFolder, or the dense-task
    formats of prunefx/data/samples.py), read by torch's DataLoader with `num_workers` decoding
    processes (0: decode in this process). Same interface and padding rules as `TensorBatches`."""

    def __init__(self, folder: ImageFolder | Dataset, batch_size: int, *, shuffle: bool, seed: int = 0,
                 drop_last: bool | None = None, num_workers: int = 0):
        super().__init__(len(folder), batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last)
        self.folder = folder
        self.num_workers = num_workers

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        # A fresh DataLoader per epoch: its sampler reads the epoch and shard set now.
        loader = DataLoader(_SeededSamples(self.folder), batch_sampler=_ShardBatchSampler(self),
                            num_workers=self.num_workers, prefetch_factor=4 if self.num_workers else None)
        yield from loader

    def __repr__(self) -> str:
        return f"FolderBatches({self.folder.root}: {self._describe()})"
