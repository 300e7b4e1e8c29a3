"""Static batches through torch's DataLoader for recovery training and evaluation; the data sets are in
prunefx/data/splits.py (Fashion-MNIST, ImageFolder) and prunefx/data/formats.py (COCO, YOLO, masks).

Programs are captured at a static batch size, so every batch has exactly that size: training drops the last,
incomplete batch; evaluation pads with copies labelled -1, which `accuracy` leaves out. `StaticBatches` is a
DataLoader with `set_epoch`, its shuffle and augmentation seeded per (seed, epoch, item), and shards under
torch.distributed. Why the padding is a view and how seeds are drawn: see docs/algorithms.md, 'Static batches'.
"""

from __future__ import annotations

import math
import random
import re
import threading
from collections.abc import Callable

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, default_collate

from prunefx.data.worker_limits import bounded_workers
from prunefx.graph.errors import PrunefxError

IGNORED_LABEL = -1
# A detection image with no item: the class of its box table's first row. All -1 is a padding copy (not counted);
# an image without objects is counted (COCO's evaluation counts its detections as false positives).
NO_ITEMS = -2
# A crowd region of class c (COCO's iscrowd) has class CROWD - c: evaluation ignores it and the detections on it.
CROWD = -3

# Generator streams derived from one (seed, epoch); the values are those the shuffles were always drawn with.
_ORDER_STREAM, _WORKER_STREAM, _SAMPLE_STREAM, _BATCH_AUGMENT_STREAM = 0, 1, 2, 3


def derive_seed(*parts: int) -> int:
    """A 63-bit seed mixed from non-negative integers (seed, epoch, stream, ...). Mixing, unlike
    `seed + epoch`, keeps (seed 0, epoch 1) and (seed 1, epoch 0) apart."""
    state = np.random.SeedSequence([int(p) for p in parts]).generate_state(1, dtype=np.uint64)[0]
    return int(state) >> 1


def seed_worker(_worker_id: int) -> None:
    """DataLoader worker_init_fn: torch seeds each worker from the loader's generator; numpy and `random`
    (which users' transforms may draw from) follow it instead of repeating the parent's state. A worker whose
    parent went away (SIGTERM, Ctrl-C) ends without a traceback of the broken connection under the parent's
    one line."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
    threading.excepthook = _quiet_when_parent_gone(threading.excepthook)


def _quiet_when_parent_gone(hook):
    def excepthook(arguments) -> None:
        if not issubclass(arguments.exc_type, (ConnectionResetError, BrokenPipeError, EOFError)):
            hook(arguments)
    return excepthook


def _padding_label(label):
    # dense labels (a mask, a box table) are padded whole: every entry of a copy is -1
    return torch.full_like(label, IGNORED_LABEL) if isinstance(label, torch.Tensor) else IGNORED_LABEL


class _Padded(Dataset):
    """`dataset` then copies of the items from `start` on (its last, incomplete batch), labelled -1, up to `length`."""

    def __init__(self, dataset: Dataset, length: int, start: int):
        self.dataset, self.length, self.start = dataset, length, start

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int):
        real = len(self.dataset)
        if index < real:
            return self.dataset[index]
        image, label = self.dataset[self.start + (index - real) % (real - self.start)]
        return image, _padding_label(label)


class _SeededItems(Dataset):
    """Each item read under torch's global generator seeded from (seed, epoch, index), saved and restored
    around it: torchvision's random transforms draw from it, so an item is the same in any worker or rank."""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed, self.epoch = dataset, seed, 0

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        # the CPU generator alone: torch.manual_seed (which also seeds every accelerator) costs 50x more per item
        generator = torch.default_generator
        state = generator.get_state()
        generator.manual_seed(derive_seed(self.seed, self.epoch, _SAMPLE_STREAM, index))
        try:
            return self.dataset[index]
        finally:
            generator.set_state(state)

    def __getitems__(self, indices: list[int]) -> list:
        # torch's DataLoader reads a batch through this when present: a data set that augments whole batches
        # (TensorSamples with a batched augmentation) gets the epoch's seed; any other is read item by item.
        if getattr(self.dataset, "reads_batches", False):
            return self.dataset.read_items(indices, derive_seed(self.seed, self.epoch, _BATCH_AUGMENT_STREAM))
        return [self[index] for index in indices]


class _Collate:
    """default_collate, images as plain tensors (not torchvision tv_tensors), then `prepare` on the whole
    batch (e.g. uint8 -> normalised float: one vectorised step instead of one per image)."""

    def __init__(self, prepare: Callable[[torch.Tensor], torch.Tensor] | None):
        self.prepare = prepare

    def __call__(self, items):
        images, labels = default_collate(items)
        images = images.as_subclass(torch.Tensor)
        return (self.prepare(images) if self.prepare else images.float()), labels


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class StaticBatches(DataLoader):
    """A DataLoader over `dataset` ((image, label) items) in static batches of `batch_size` (the global
    batch: per process batch_size / world_size). `shuffle`: training (seeded shuffle, last batch dropped);
    else evaluation (in order, last batch padded with label -1). `prepare` runs on each collated batch."""

    def __init__(self, dataset: Dataset, batch_size: int, *, shuffle: bool, seed: int = 0, num_workers: int = 0,
                 prepare: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 world: tuple[int, int] | None = None):
        rank, world_size = world or _world()
        _check(len(dataset), batch_size, shuffle, world_size)
        num_workers = bounded_workers(num_workers)  # within the cores and open files (worker_limits.py)
        self.source, self.seed, self.epoch, self.shuffle = dataset, seed, 0, shuffle
        self._options = {"shuffle": shuffle, "seed": seed, "num_workers": num_workers, "prepare": prepare}
        items = _SeededItems(dataset, seed) if shuffle else _padded(dataset, batch_size)
        self._order = torch.Generator()  # reseeded from (seed, epoch) at every iteration
        self._workers = torch.Generator()
        if world_size > 1:
            sampler = DistributedSampler(items, num_replicas=world_size, rank=rank, shuffle=shuffle,
                                         seed=derive_seed(seed, _ORDER_STREAM), drop_last=shuffle)
        else:
            sampler = RandomSampler(items, generator=self._order) if shuffle else None
        super().__init__(items, batch_size=batch_size // world_size, sampler=sampler, drop_last=shuffle,
                         num_workers=num_workers, collate_fn=_Collate(prepare), worker_init_fn=seed_worker,
                         generator=self._workers, pin_memory=torch.cuda.is_available(),
                         prefetch_factor=4 if num_workers else None)
        self.rank, self.world_size = rank, world_size

    @property
    def num_samples(self) -> int:
        """The real items (padding not counted)."""
        return len(self.source)

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose order (and augmentation) the next iteration yields."""
        self.epoch = epoch
        if isinstance(self.dataset, _SeededItems):
            self.dataset.epoch = epoch
        if isinstance(self.sampler, DistributedSampler):
            self.sampler.set_epoch(epoch)

    def distributed(self, rank: int, world_size: int) -> StaticBatches:
        """The same batches for one process of `world_size`, read through a DistributedSampler."""
        if not 0 <= rank < world_size:
            raise PrunefxError(f"rank {rank} is not in a world of {world_size} processes")
        part = StaticBatches(self.source, self.batch_size * self.world_size, world=(rank, world_size), **self._options)
        part.set_epoch(self.epoch)
        return part

    def __iter__(self):
        # Seeded per iteration, so that iterating one epoch twice gives the same batches.
        self._order.manual_seed(derive_seed(self.seed, self.epoch, _ORDER_STREAM))
        self._workers.manual_seed(derive_seed(self.seed, self.epoch, _WORKER_STREAM))
        return _own_errors(super().__iter__())

    def __repr__(self) -> str:
        kind = "shuffled, last batch dropped" if self.shuffle else "in order, last batch padded with label -1"
        shard = f", rank {self.rank} of {self.world_size} (DistributedSampler)" if self.world_size > 1 else ""
        name = getattr(self.source, "root", type(self.source).__name__)
        return (f"StaticBatches({name}: {self.num_samples} images, batch {self.batch_size}, {len(self)} batches, "
                f"{kind}, {self.num_workers} workers{shard})")


# torch re-raises a worker's exception as `type("Caught T in DataLoader worker process N.\nOriginal Traceback
# ...\n<module>.T: message")`: the worker's own line is the last one of the traceback.
_WORKER_TRACEBACK = re.compile(r"^Caught \w+ in DataLoader worker process \d+\.")
_LAST_LINE = re.compile(r"^[\w.]+: (.+)$")


def worker_message(error: PrunefxError) -> str | None:
    """The one line a PrunefxError raised inside a DataLoader worker carried; None for any other error."""
    text = str(error)
    if not _WORKER_TRACEBACK.match(text):
        return None
    lines = [line for line in text.splitlines() if line.strip()]
    found = _LAST_LINE.match(lines[-1]) if lines else None
    return found.group(1) if found else None


def _own_errors(batches):
    """`batches`, but a PrunefxError from a worker process reaches the caller as the worker's own one line,
    of the same type, without torch's traceback and the paths in it."""
    try:
        yield from batches
    except PrunefxError as error:
        message = worker_message(error)
        if message is None:
            raise
        try:
            own = type(error)(message)
        except TypeError:  # a subclass whose constructor takes more than a message
            own = PrunefxError(message)
        raise own from None


def _check(count: int, batch_size: int, shuffle: bool, world_size: int) -> None:
    if batch_size < 1:
        raise PrunefxError(f"batch size must be at least 1, got {batch_size}")
    if count < 1:
        raise PrunefxError("a data loader needs at least one image, got none")
    if shuffle and count < batch_size:
        raise PrunefxError(f"{count} images make no full batch of {batch_size}; use a smaller batch size")
    if batch_size % world_size:
        raise PrunefxError(f"batch size {batch_size} is not divisible by world size {world_size}: every process "
                           "needs the same static batch size")


def _padded(dataset: Dataset, batch_size: int) -> Dataset:
    count = len(dataset)
    if count % batch_size == 0:
        return dataset
    return _Padded(dataset, math.ceil(count / batch_size) * batch_size, count - count % batch_size)
