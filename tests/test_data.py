"""Data loaders for recovery training: static batch sizes, padding, sharding, augmentation, splits."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, DistributedSampler
from torchvision.transforms import v2

from prunefx.data import fashion_mnist
from prunefx.data.load import load_data
from prunefx.data.splits import (
    IGNORED_LABEL,
    NormalizeBatch,
    StaticBatches,
    accuracy,
    derive_seed,
    fashion_mnist_data,
    image_folder_data,
    split_train_validation,
    tensor_batches,
)
from prunefx.graph.errors import PrunefxError

torch.set_num_threads(1)

needs_fashion_mnist = pytest.mark.skipif(
    not fashion_mnist.DEFAULT_ROOT.is_dir(),
    reason=f"{fashion_mnist.DEFAULT_ROOT} missing: apt-get install dataset-fashion-mnist")


def numbered_images(count: int, size: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    """`count` distinct random uint8 images (1 x size x size) whose label is their index."""
    images = torch.randint(1, 256, (count, 1, size, size), generator=torch.Generator().manual_seed(0))
    return images.to(torch.uint8), torch.arange(count)


def collect(loader) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    batches = list(loader)
    return [images for images, _ in batches], [labels for _, labels in batches]


# ---- static batches through DataLoader ---------------------------------------------------------

def test_training_drops_and_evaluation_pads_the_last_batch():
    images, labels = numbered_images(50)
    train = tensor_batches(images, labels, 16, shuffle=True)
    evaluation = tensor_batches(images, labels, 16, shuffle=False)
    assert isinstance(train, DataLoader) and len(train) == 3 and len(evaluation) == 4
    for loader in (train, evaluation):
        assert all(batch.shape == (16, 1, 6, 6) and batch.dtype == torch.float32 for batch in collect(loader)[0])
    # Training: 48 distinct images, no padding.
    train_labels = torch.cat(collect(train)[1])
    assert train_labels.unique().numel() == 48 and (train_labels >= 0).all()
    # Evaluation: every image once, in order, then 14 copies of the last batch's real images labelled -1.
    batches, label_batches = collect(evaluation)
    all_images, all_labels = torch.cat(batches), torch.cat(label_batches)
    assert torch.equal(all_labels[:50], labels) and (all_labels[50:] == IGNORED_LABEL).all()
    assert torch.equal(all_images[:50], images.float())
    assert torch.equal(all_images[50:], images[48:50].float().repeat(7, 1, 1, 1))


def test_shuffle_is_deterministic_per_epoch_whatever_the_workers():
    images, labels = numbered_images(40)
    first = tensor_batches(images, labels, 8, shuffle=True)
    order = torch.cat(collect(first)[1])
    assert torch.equal(order, torch.cat(collect(first)[1]))  # the same epoch again
    assert torch.equal(order, torch.cat(collect(tensor_batches(images, labels, 8, shuffle=True, num_workers=2))[1]))
    # the order the hand-written loaders drew: randperm from (seed, epoch, stream 0)
    expected = torch.randperm(40, generator=torch.Generator().manual_seed(derive_seed(0, 0, 0)))
    assert torch.equal(order, expected)
    first.set_epoch(1)
    assert not torch.equal(order, torch.cat(collect(first)[1]))
    assert torch.equal(torch.cat(collect(first)[1]).sort().values, torch.arange(40))


def test_augmentation_is_seeded_per_image_and_epoch_not_per_worker():
    images, labels = numbered_images(32)
    crop_flip = v2.Compose([v2.RandomCrop(6, padding=2), v2.RandomHorizontalFlip()])

    def epoch_images(seed: int, epoch: int, workers: int = 0) -> torch.Tensor:
        loader = tensor_batches(images, labels, 8, shuffle=True, transform=crop_flip, seed=seed, num_workers=workers)
        loader.set_epoch(epoch)
        batches, label_batches = collect(loader)
        return torch.cat(batches)[torch.cat(label_batches).argsort()]  # by image, whatever the order

    reference = epoch_images(0, 0)
    assert torch.equal(reference, epoch_images(0, 0, workers=2))
    assert not torch.equal(reference, epoch_images(0, 1))
    assert not torch.equal(reference, epoch_images(1, 0))
    assert not torch.equal(reference, images.float())


@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("world_size", [2, 4])
def test_distributed_ranks_read_disjoint_parts_through_a_distributed_sampler(shuffle, world_size):
    images, labels = numbered_images(70)
    whole = tensor_batches(images, labels, 16, shuffle=shuffle, seed=3)
    ranks = [whole.distributed(rank, world_size) for rank in range(world_size)]
    assert all(isinstance(part.sampler, DistributedSampler) for part in ranks)
    assert all(len(part) == len(whole) and part.batch_size == 16 // world_size for part in ranks)
    seen = torch.cat([torch.cat(collect(part)[1]) for part in ranks])
    real = seen[seen != IGNORED_LABEL]
    assert real.unique().numel() == len(real)  # no image twice
    assert len(real) == (64 if shuffle else 70)  # training drops 6; evaluation counts every image once
    first = torch.cat(collect(ranks[0])[1])
    ranks[0].set_epoch(1)
    assert torch.equal(torch.cat(collect(ranks[0])[1]), first) != shuffle  # set_epoch reshuffles training


def test_batch_must_divide_among_the_processes():
    images, labels = numbered_images(20)
    loader = tensor_batches(images, labels, 6, shuffle=True)
    with pytest.raises(PrunefxError, match="batch size 6 is not divisible by world size 4"):
        loader.distributed(0, 4)
    with pytest.raises(PrunefxError, match="rank 2 is not in a world of 2"):
        loader.distributed(2, 2)


def test_too_few_images_for_one_training_batch():
    images, labels = numbered_images(5)
    with pytest.raises(PrunefxError, match="no full batch of 8"):
        tensor_batches(images, labels, 8, shuffle=True)
    assert len(tensor_batches(images, labels, 8, shuffle=False)) == 1  # evaluation pads instead


def test_normalize_batch_repeats_gray_for_rgb_models():
    images = torch.full((2, 1, 4, 4), 51, dtype=torch.uint8)  # 0.2 after scaling
    out = NormalizeBatch([0.5], [0.25], channels=3)(images)
    assert out.shape == (2, 3, 4, 4) and torch.allclose(out, torch.full_like(out, -1.2))


def test_accuracy_ignores_padding():
    logits = torch.tensor([[0.0, 1.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    assert accuracy(logits, torch.tensor([1, 0, 1, IGNORED_LABEL])) == (2, 3)


# ---- Fashion-MNIST -----------------------------------------------------------------------------

def test_validation_is_a_seeded_subset_of_train():
    train, val = split_train_validation(1000, 100, seed=5)
    assert len(train) == 900 and len(val) == 100
    assert torch.equal(torch.cat([train, val]).sort().values, torch.arange(1000))  # disjoint, complete
    assert torch.equal(val, split_train_validation(1000, 100, seed=5)[1])
    assert not torch.equal(val, split_train_validation(1000, 100, seed=6)[1])
    with pytest.raises(PrunefxError, match="validation must hold"):
        split_train_validation(1000, 1000)


@pytest.fixture(scope="module")
def fashion_splits():
    return fashion_mnist_data(500, augment=False)


@needs_fashion_mnist
def test_fashion_mnist_split_sizes_and_held_out_validation(fashion_splits):
    splits = fashion_splits
    assert (splits.train.num_samples, splits.val.num_samples, splits.test.num_samples) == (55000, 5000, 10000)
    assert all(isinstance(loader, DataLoader) for loader in (splits.train, splits.val, splits.test))
    assert splits.num_classes == 10 and splits.input_shape == (1, 28, 28)
    # The validation images are the training images at the held-out indices, not test images.
    raw_images, raw_labels = fashion_mnist.load_fashion_mnist("train")
    _, val_index = split_train_validation(60000, 5000, seed=0)
    images, labels = next(iter(splits.val))
    assert torch.equal(labels, raw_labels[val_index[:500]])
    assert torch.equal(images, NormalizeBatch([fashion_mnist.MEAN], [fashion_mnist.STD])(raw_images[val_index[:500], None]))
    assert fashion_mnist_data(500, validation=0).val is None


@needs_fashion_mnist
def test_fashion_mnist_train_split_is_normalised(fashion_splits):
    total = total_squares = count = 0
    for images, labels in fashion_splits.train:
        assert images.shape == (500, 1, 28, 28) and (labels >= 0).all()
        total, total_squares = total + images.double().sum(), total_squares + images.double().square().sum()
        count += images.numel()
    mean = total / count
    std = (total_squares / count - mean**2).sqrt()
    assert abs(mean) < 0.02 and abs(std - 1) < 0.02


@needs_fashion_mnist
def test_fashion_mnist_test_batches_cover_every_image_once():
    splits = fashion_mnist_data(384, validation=0, channels=3)
    _, raw_labels = fashion_mnist.load_fashion_mnist("test")
    batches, label_batches = collect(splits.test)
    assert all(batch.shape == (384, 3, 28, 28) for batch in batches)
    labels = torch.cat(label_batches)
    assert len(labels) == 27 * 384 and torch.equal(labels[:10000], raw_labels)
    assert (labels[10000:] == IGNORED_LABEL).all()


@needs_fashion_mnist
def test_fashion_mnist_training_is_augmented():
    plain = next(iter(fashion_mnist_data(256, validation=0, augment=False).train))[0]
    augmented = next(iter(fashion_mnist_data(256, validation=0).train))[0]
    # Same order (seeded apart from augmentation), different pixels.
    assert plain.shape == augmented.shape and not torch.equal(plain, augmented)


# ---- image folders -----------------------------------------------------------------------------

COLOURS = {"blue": (0, 0, 255), "red": (255, 0, 0)}  # class 0 = blue, class 1 = red (sorted names)


def make_image_folder(root, counts: dict[str, int]) -> None:
    for split, count in counts.items():
        for name, colour in COLOURS.items():
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                Image.new("RGB", (40 + 4 * i, 36), colour).save(root / split / name / f"{i}.png")


def test_image_folder_gives_full_batches_with_the_right_labels(tmp_path):
    make_image_folder(tmp_path, {"train": 5, "val": 3})
    splits = load_data(tmp_path, 4, image_size=32)
    assert isinstance(splits.train, StaticBatches) and splits.test is None
    assert splits.classes == ("blue", "red") and splits.input_shape == (3, 32, 32)
    assert (len(splits.train), len(splits.val)) == (2, 2)
    for loader in (splits.train, splits.val):
        for images, labels in loader:
            assert images.shape == (4, 3, 32, 32) and type(images) is torch.Tensor
            real = labels != IGNORED_LABEL
            # Solid colours survive crops and flips: the brighter channel names the class.
            is_red = images[:, 0].mean((1, 2)) > images[:, 2].mean((1, 2))
            assert torch.equal(is_red[real].long(), labels[real])
    val_labels = torch.cat(collect(splits.val)[1])
    assert val_labels.tolist() == [0, 0, 0, 1, 1, 1, IGNORED_LABEL, IGNORED_LABEL]


def test_images_beside_the_class_folders_are_said_and_not_read(tmp_path, caplog):
    make_image_folder(tmp_path, {"train": 4, "val": 1})
    Image.new("RGB", (40, 36), (0, 255, 0)).save(tmp_path / "train" / "stray.png")
    with caplog.at_level("WARNING", logger="prunefx"):
        splits = load_data(tmp_path, 4, image_size=16)
    assert sum(len(labels) for labels in collect(splits.train)[1]) == 8  # the two classes' images only
    said = [record.getMessage() for record in caplog.records if "outside its class folders" in record.getMessage()]
    assert len(said) == 1 and "train holds 1 image(s)" in said[0] and "stray.png" in said[0]


def test_image_folder_ranks_and_epochs_are_reproducible(tmp_path):
    make_image_folder(tmp_path, {"train": 4, "val": 1})
    train = image_folder_data(tmp_path, 4, image_size=16).train

    def fingerprints(loader) -> list[float]:
        return sorted(round(float(image.sum()), 2) for batch in collect(loader)[0] for image in batch)

    whole = torch.cat(collect(train)[0])
    assert torch.equal(whole, torch.cat(collect(train)[0]))
    # random crops are seeded per image: two ranks read, between them, the single process's images
    assert sorted(fingerprints(train.distributed(0, 2)) + fingerprints(train.distributed(1, 2))) == fingerprints(train)
    train.set_epoch(1)
    assert not torch.equal(torch.cat(collect(train)[0]), whole)


def test_image_folder_errors(tmp_path):
    with pytest.raises(PrunefxError, match="does not exist"):
        load_data(tmp_path / "absent", 4)
    (tmp_path / "train").mkdir()
    with pytest.raises(PrunefxError, match="lacks val/"):
        image_folder_data(tmp_path, 4)
    (tmp_path / "val").mkdir()
    with pytest.raises(PrunefxError, match="holds no class folders"):
        image_folder_data(tmp_path, 4)


@pytest.mark.skipif(importlib.util.find_spec("foolbox") is None,
                    reason="offline ImageNet sample missing: pip install --no-deps foolbox==3.3.4")
def test_imagenet_sample_is_a_padded_test_loader():
    splits = load_data("imagenet-sample", 8, image_size=32)
    assert splits.train is None and splits.evaluation is splits.test and splits.num_classes == 1000
    batches, label_batches = collect(splits.test)
    assert [batch.shape for batch in batches] == [(8, 3, 32, 32)] * 3
    labels = torch.cat(label_batches)
    assert (labels[:20] >= 0).all() and (labels[20:] == IGNORED_LABEL).all()


def test_unknown_data_spec_lists_the_accepted_forms():
    with pytest.raises(PrunefxError, match="'fashion-mnist', 'imagenet-sample', 'fashion-mnist-seg', 'fashion-mnist-det' or the path"):
        load_data("cifar10", 8)
