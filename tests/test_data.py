"""Data loaders for recovery training: static batch sizes, padding, sharding, augmentation, splits."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from PIL import Image

from prunefx.data import fashion_mnist
from prunefx.data.splits import (
    IGNORED_LABEL,
    FolderBatches,
    NormalizeBatch,
    RandomCropFlip,
    TensorBatches,
    accuracy,
    fashion_mnist_data,
    image_folder_data,
    load_data,
    split_train_validation,
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


# ---- TensorBatches ---------------------------------------------------------------------------------

def test_training_drops_and_evaluation_pads_the_last_batch():
    images, labels = numbered_images(50)
    train = TensorBatches(images, labels, 16, shuffle=True)
    evaluation = TensorBatches(images, labels, 16, shuffle=False)
    assert len(train) == 3 and len(evaluation) == 4
    for loader in (train, evaluation):
        assert all(batch.shape == (16, 1, 6, 6) and batch.dtype == torch.float32 for batch in collect(loader)[0])
    # Training: 48 distinct images, no padding.
    train_labels = torch.cat(collect(train)[1])
    assert train_labels.unique().numel() == 48 and (train_labels >= 0).all()
    # Evaluation: every image once, in order, then 14 copies of real images labelled -1.
    batches, label_batches = collect(evaluation)
    all_images, all_labels = torch.cat(batches), torch.cat(label_batches)
    assert torch.equal(all_labels[:50], labels) and (all_labels[50:] == IGNORED_LABEL).all()
    assert torch.equal(all_images[:50], images.float())
    assert torch.equal(all_images[50:], images[48:50].float().repeat(7, 1, 1, 1))


def test_shuffle_is_deterministic_per_epoch():
    images, labels = numbered_images(40)
    first, second = TensorBatches(images, labels, 8, shuffle=True), TensorBatches(images, labels, 8, shuffle=True)
    order = torch.cat(collect(first)[1])
    assert torch.equal(order, torch.cat(collect(second)[1]))
    assert not torch.equal(order, torch.arange(40))
    first.set_epoch(1)
    assert not torch.equal(order, torch.cat(collect(first)[1]))
    assert torch.equal(torch.cat(collect(first)[1]).sort().values, torch.arange(40))


@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("world_size", [2, 4])
def test_shards_concatenate_to_the_global_batch(shuffle, world_size):
    images, labels = numbered_images(70)
    whole = TensorBatches(images, labels, 16, shuffle=shuffle, augment=RandomCropFlip(2), seed=3)
    shards = [whole.shard(rank, world_size) for rank in range(world_size)]
    for loader in (whole, *shards):
        loader.set_epoch(2)
    expected_images, expected_labels = collect(whole)
    per_rank = [collect(shard) for shard in shards]
    assert all(len(shard) == len(whole) and shard.batch_size == 16 // world_size for shard in shards)
    for i in range(len(whole)):
        assert torch.equal(torch.cat([rank_images[i] for rank_images, _ in per_rank]), expected_images[i])
        assert torch.equal(torch.cat([rank_labels[i] for _, rank_labels in per_rank]), expected_labels[i])


def test_shard_needs_a_batch_divisible_by_the_world_size():
    images, labels = numbered_images(20)
    loader = TensorBatches(images, labels, 6, shuffle=True)
    with pytest.raises(PrunefxError, match="batch size 6 is not divisible by world size 4"):
        loader.shard(0, 4)
    with pytest.raises(PrunefxError, match="rank 2 is not in a world of 2"):
        loader.shard(2, 2)
    with pytest.raises(PrunefxError, match="already a shard"):
        loader.shard(0, 2).shard(0, 1)


def test_too_few_images_for_one_training_batch():
    images, labels = numbered_images(5)
    with pytest.raises(PrunefxError, match="no full batch of 8"):
        TensorBatches(images, labels, 8, shuffle=True)
    assert len(TensorBatches(images, labels, 8, shuffle=False)) == 1  # evaluation pads instead


# ---- augmentation ------------------------------------------------------------------------------

def shifted(image: torch.Tensor, down: int, right: int) -> torch.Tensor:
    """`image` moved down/right by whole pixels (negative: up/left), zeros entering at the edges."""
    out = torch.zeros_like(image)
    height, width = image.shape[-2:]
    out[..., max(down, 0):height + min(down, 0), max(right, 0):width + min(right, 0)] = \
        image[..., max(-down, 0):height + min(-down, 0), max(-right, 0):width + min(-right, 0)]
    return out


def test_crop_shifts_content_and_flip_mirrors_it():
    images, _ = numbered_images(3)
    crop_flip = RandomCropFlip(padding=2)
    params = {"top": torch.tensor([2, 3, 0]), "left": torch.tensor([2, 2, 4]),
              "flip": torch.tensor([True, False, False])}
    out = crop_flip(images, params)
    assert torch.equal(out[0], images[0].flip(-1))          # centred crop: only the flip
    assert torch.equal(out[1], shifted(images[1], -1, 0))   # crop one row lower: content moves up
    assert torch.equal(out[2], shifted(images[2], 2, -2))
    assert (out[1, :, -1] == 0).all()                       # the padding entered at the bottom


def test_random_augmentation_is_always_a_shift_or_flip_and_varies():
    images, _ = numbered_images(64)
    crop_flip = RandomCropFlip(padding=2)
    params = crop_flip.draw(64, torch.Generator().manual_seed(1))
    out = crop_flip(images, params)
    for image, result, top, left, flip in zip(images, out, params["top"], params["left"], params["flip"]):
        expected = shifted(image, 2 - int(top), 2 - int(left))
        assert torch.equal(result, expected.flip(-1) if flip else expected)
    offsets = set(zip(params["top"].tolist(), params["left"].tolist()))
    assert len(offsets) > 10 and 10 < int(params["flip"].sum()) < 54


def test_augmentation_reproducible_per_seed_and_epoch():
    images, labels = numbered_images(32)

    def epoch_images(seed: int, epoch: int) -> torch.Tensor:
        # In order, so any difference between epochs comes from augmentation alone.
        loader = TensorBatches(images, labels, 8, shuffle=False, augment=RandomCropFlip(2), seed=seed)
        loader.set_epoch(epoch)
        return torch.cat(collect(loader)[0])

    reference = epoch_images(0, 0)
    assert torch.equal(reference, epoch_images(0, 0))
    assert not torch.equal(reference, epoch_images(0, 1))
    assert not torch.equal(reference, epoch_images(1, 0))
    assert not torch.equal(reference, images.float())


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
    assert splits.num_classes == 10 and splits.input_shape == (1, 28, 28)
    # The validation images are the training images at the held-out indices, not test images.
    raw_images, raw_labels = fashion_mnist.load_fashion_mnist("train")
    _, val_index = split_train_validation(60000, 5000, seed=0)
    images, labels = next(iter(splits.val))
    assert torch.equal(labels, raw_labels[val_index[:500]])
    assert torch.equal(images, splits.val.prepare(raw_images[val_index[:500], None]))
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
    assert isinstance(splits.train, FolderBatches) and splits.test is None
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


def test_image_folder_shards_and_epochs_are_reproducible(tmp_path):
    make_image_folder(tmp_path, {"train": 4, "val": 1})
    train = image_folder_data(tmp_path, 4, image_size=16).train
    shards = [train.shard(rank, 2) for rank in range(2)]
    whole = collect(train)[0]
    for i, (first, second) in enumerate(zip(collect(shards[0])[0], collect(shards[1])[0])):
        assert torch.equal(torch.cat([first, second]), whole[i])  # random crops seeded per sample
    train.set_epoch(1)
    assert not torch.equal(torch.cat(collect(train)[0]), torch.cat(whole))


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
