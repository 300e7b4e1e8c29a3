"""Batched crop and flip (prunefx/data/augment.py) against torchvision's per-image crop and flip, the oracle:
every image a loader yields must be torchvision's crop (after zero padding) of its source image, flipped or
not, and each image's draw must depend on (seed, epoch, image) only."""

from __future__ import annotations

import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from prunefx.data import fashion_mnist
from prunefx.data.augment import RandomCropFlip
from prunefx.data.splits import derive_seed, fashion_mnist_data, tensor_batches
from prunefx.graph.errors import PrunefxError

torch.set_num_threads(1)
PADDING = 2


def numbered_images(count: int, size: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    """Random uint8 images without zeros (so the zero padding shows where a crop lies); label = index."""
    images = torch.randint(1, 256, (count, 1, size, size), generator=torch.Generator().manual_seed(0))
    return images.to(torch.uint8), torch.arange(count)


def torchvision_candidates(image: torch.Tensor) -> dict[tuple[int, int, bool], torch.Tensor]:
    """Every (top, left, flip) crop torchvision's RandomCrop(padding) + RandomHorizontalFlip can give."""
    height, width = image.shape[-2:]
    padded = TF.pad(image, [PADDING])
    out = {}
    for top in range(2 * PADDING + 1):
        for left in range(2 * PADDING + 1):
            crop = TF.crop(padded, top, left, height, width)
            out[(top, left, False)], out[(top, left, True)] = crop, TF.horizontal_flip(crop)
    return out


def draws_by_item(loader, images: torch.Tensor, epoch: int) -> dict[int, tuple[int, int, bool]]:
    """item -> the one torchvision draw its loaded image equals (asserted unique)."""
    loader.set_epoch(epoch)
    found = {}
    for batch, labels in loader:
        for image, label in zip(batch, labels.tolist()):
            matches = [key for key, crop in torchvision_candidates(images[label]).items()
                       if torch.equal(crop.float(), image)]
            assert len(matches) == 1, f"item {label}: {len(matches)} torchvision crops match"
            found[label] = matches[0]
    return found


def test_each_image_is_torchvision_crop_and_flip_drawn_per_item_and_epoch():
    images, labels = numbered_images(48)
    crop_flip = RandomCropFlip(PADDING)
    reference = draws_by_item(tensor_batches(images, labels, 8, shuffle=True, augment=crop_flip, seed=5), images, 1)
    assert len(reference) == 48
    # the same draws whatever the batch size, the number of worker processes or of DDP ranks
    other_batch = tensor_batches(images, labels, 16, shuffle=True, augment=RandomCropFlip(PADDING), seed=5,
                                 num_workers=2)
    assert draws_by_item(other_batch, images, 1) == reference
    whole = tensor_batches(images, labels, 8, shuffle=True, augment=RandomCropFlip(PADDING), seed=5)
    whole.set_epoch(1)
    ranks = {}
    for rank in range(2):
        ranks.update(draws_by_item(whole.distributed(rank, 2), images, 1))
    assert ranks == reference
    # another epoch or seed draws again
    assert draws_by_item(whole, images, 2) != reference
    assert draws_by_item(tensor_batches(images, labels, 8, shuffle=True, augment=crop_flip, seed=6), images, 1) \
        != reference


def test_draws_cover_every_offset_and_flip_about_half():
    table = RandomCropFlip(PADDING).table(4000, seed=11)
    corners = set(zip(table["top"].tolist(), table["left"].tolist()))
    assert corners == {(top, left) for top in range(5) for left in range(5)}
    assert 0.45 < table["flip"].float().mean() < 0.55
    assert not RandomCropFlip(PADDING, flip=False).table(100, seed=11)["flip"].any()


def test_transform_and_batched_augmentation_are_exclusive():
    images, labels = numbered_images(8)
    with pytest.raises(PrunefxError, match="not both"):
        tensor_batches(images, labels, 4, shuffle=True, transform=TF.horizontal_flip, augment=RandomCropFlip())


@pytest.mark.skipif(not fashion_mnist.DEFAULT_ROOT.is_dir(), reason="apt-get install dataset-fashion-mnist")
def test_fashion_mnist_training_batch_is_torchvision_crops_of_its_images():
    augmented = fashion_mnist_data(64, validation=0).train
    plain = fashion_mnist_data(64, validation=0, augment=False).train
    augmented.set_epoch(3)
    plain.set_epoch(3)
    (images, labels), (_, plain_labels) = next(iter(augmented)), next(iter(plain))
    assert torch.equal(labels, plain_labels)  # the same order: the augmentation draws from its own stream
    # the epoch's order, as the loaders always drew it (tests/test_data.py checks it)
    order = torch.randperm(len(augmented.source), generator=torch.Generator().manual_seed(derive_seed(0, 3, 0)))
    prepare, stored = augmented.collate_fn.prepare, augmented.source.images
    flipped = 0
    for image, index in zip(images, order[:64].tolist()):
        matches = [key for key, crop in torchvision_candidates(stored[index]).items()
                   if torch.equal(prepare(crop[None])[0], image)]
        assert matches, f"image {index} is no torchvision crop of its source"
        flipped += all(key[2] for key in matches)
    assert 0 < flipped < 64
