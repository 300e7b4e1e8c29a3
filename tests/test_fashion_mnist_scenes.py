"""The Fashion-MNIST scene generator: labels, boxes, split separation and determinism, checked against
oracles that do not use the generator's own code (PIL resizing, pixel values that name their source)."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from prunefx.data import fashion_mnist
from prunefx.data.fashion_mnist_scenes import NO_ITEM, NUM_CLASSES, SceneConfig, make_scenes
from prunefx.data.load import load_data
from prunefx.data.splits import FASHION_MNIST_DET, FASHION_MNIST_SEG, IGNORED_LABEL
from prunefx.graph.errors import PrunefxError

torch.set_num_threads(1)

needs_fashion_mnist = pytest.mark.skipif(
    not fashion_mnist.DEFAULT_ROOT.is_dir(),
    reason=f"{fashion_mnist.DEFAULT_ROOT} missing: apt-get install dataset-fashion-mnist")


@pytest.fixture(autouse=True)
def scene_cache(tmp_path_factory, monkeypatch):
    """Scenes drawn from the temporary item files below are written to a temporary cache, not the user's."""
    monkeypatch.setenv("PRUNEFX_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "prunefx-cache"))


@pytest.fixture(scope="module")
def test_items():
    return fashion_mnist.load_fashion_mnist("test")


@pytest.fixture(scope="module")
def scenes(test_items):
    images, labels = test_items
    return make_scenes(images, labels, 40, split="test", config=SceneConfig(size=96), seed=3)


def items_of(scenes, n):
    """(box row, source, square) of every item on canvas n."""
    present = scenes.sources[n] != NO_ITEM
    return list(zip(scenes.boxes[n][present].tolist(), scenes.sources[n][present].tolist(),
                    scenes.squares[n][present].tolist()))


@needs_fashion_mnist
def test_pasted_pixels_are_the_resized_items_and_labels_follow_them(scenes, test_items):
    images, labels = test_items
    threshold = scenes.config.threshold
    for n in range(len(scenes)):
        canvas, mask = scenes.images[n, 0].numpy().astype(int), scenes.masks[n].numpy()
        expected = np.zeros_like(mask)
        for (cls, *_), source, (top, left, side) in items_of(scenes, n):
            assert cls == int(labels[source])
            # Oracle: PIL's own antialiased bilinear resize of the source item.
            reference = np.asarray(Image.fromarray(images[source].numpy()).resize((side, side), Image.BILINEAR),
                                   dtype=int)
            patch = canvas[top:top + side, left:left + side]
            assert np.abs(patch - reference).max() <= 2 and np.abs(patch - reference).mean() < 0.5
            expected[top:top + side, left:left + side] = np.where(patch > threshold, cls + 1, 0)
        # Pixel for pixel: an item's pixel above the threshold has its class, every other pixel is background.
        assert np.array_equal(mask, expected)
        assert np.array_equal(mask > 0, canvas > threshold)
    assert set(np.unique(scenes.masks.numpy())) == set(range(NUM_CLASSES))


@needs_fashion_mnist
def test_boxes_are_the_tight_boxes_of_the_item_masks(scenes):
    for n in range(len(scenes)):
        mask = scenes.masks[n].numpy()
        covered = np.zeros(mask.shape, dtype=int)
        for (cls, x1, y1, x2, y2), _, (top, left, side) in items_of(scenes, n):
            # Inside the pasted square, and holding only this item's class or background.
            assert top <= y1 < y2 <= top + side and left <= x1 < x2 <= left + side
            inside = mask[y1:y2, x1:x2]
            assert set(np.unique(inside)) <= {0, cls + 1}
            # Tight: each edge row and column holds a labelled pixel.
            on = inside > 0
            assert on[0].any() and on[-1].any() and on[:, 0].any() and on[:, -1].any()
            covered[y1:y2, x1:x2] += 1
        # Every labelled pixel lies in exactly one box.
        assert (covered[mask > 0] == 1).all()
        assert 2 <= len(items_of(scenes, n)) <= 6


def write_idx(path, array: np.ndarray) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}i", *array.shape)
    with gzip.open(path, "wb") as file:
        file.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def valued_dataset(tmp_path):
    """A Fashion-MNIST folder whose every image is one flat value naming it: training image i is 70 + i
    (70..189), test image j is 200 + j (200..239). Resizing keeps a flat image flat, so every pixel of a
    canvas says which image it came from."""
    train = np.repeat(np.arange(70, 190)[:, None, None], 28, 1).repeat(28, 2)
    test = np.repeat(np.arange(200, 240)[:, None, None], 28, 1).repeat(28, 2)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", train)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.arange(120) % 10)
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", test)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.arange(40) % 10)
    return tmp_path


def canvas_values(loader) -> set[int]:
    """The gray values on a split's canvases, read back from the files the split was written to."""
    files = loader.source.split.images
    return set(np.unique(np.stack([np.asarray(Image.open(path)) for path in files])).tolist()) - {0}


def test_no_test_or_validation_item_appears_in_the_training_canvases(valued_dataset):
    splits = load_data(f"{FASHION_MNIST_SEG}:48", 8, root=valued_dataset, validation=20, train_canvases=200,
                       val_canvases=40, test_canvases=40, scene={"min_items": 2, "max_items": 3})
    train, val, test = canvas_values(splits.train), canvas_values(splits.val), canvas_values(splits.test)
    assert train and val and test
    assert train <= set(range(70, 190)) and val <= set(range(70, 190)) and test <= set(range(200, 240))
    assert not train & val  # the held-out training items are only in the validation canvases
    assert len(train) > 60  # drawn from across the training pool, not a handful of items


def test_the_same_seed_gives_the_same_scenes(valued_dataset):
    images, labels = fashion_mnist.load_fashion_mnist("train", valued_dataset)
    config = SceneConfig(size=40, min_items=1, max_items=3)
    first, again = (make_scenes(images, labels, 30, config=config, seed=5) for _ in range(2))
    other = make_scenes(images, labels, 30, config=config, seed=6)
    for name in ("images", "masks", "boxes", "sources", "squares"):
        assert torch.equal(getattr(first, name), getattr(again, name))
    assert not torch.equal(first.images, other.images)


def test_loaders_give_masks_or_boxes_and_pad_the_last_batch_with_ignored_labels(valued_dataset):
    options = {"root": valued_dataset, "validation": 0, "train_canvases": 20, "test_canvases": 10, "channels": 1}
    segmentation = load_data(f"{FASHION_MNIST_SEG}:32", 4, **options)
    assert segmentation.task == "segmentation" and segmentation.num_classes == 11 and segmentation.val is None
    batches = list(segmentation.test)
    assert [tuple(x.shape) for x in batches[0]] == [(4, 1, 32, 32), (4, 32, 32)]
    last = batches[-1][1]  # 10 canvases in batches of 4: the last two images are padding
    assert (last[2:] == IGNORED_LABEL).all() and (last[:2] >= 0).all()
    detection = load_data(f"{FASHION_MNIST_DET}:32", 4, **options)
    assert detection.task == "detection" and detection.num_classes == 10
    boxes = next(iter(detection.test))[1]
    assert boxes.shape == (4, 6, 5) and boxes.dtype == torch.float32


def test_a_scene_folder_missing_a_file_is_written_anew_not_read_short(valued_dataset, caplog):
    """The cache's scenes are checked against their manifest: with one test image and its mask deleted, the next
    run reads all 10 test canvases again (it read 9, silently), and the same ones as before."""
    options = {"root": valued_dataset, "validation": 0, "train_canvases": 8, "test_canvases": 10, "channels": 1}
    first = load_data(f"{FASHION_MNIST_SEG}:32", 4, **options)
    images, masks = list(first.test.source.split.images), list(first.test.source.split.masks)
    before = [np.asarray(Image.open(path)) for path in images]
    images[3].unlink()
    masks[3].unlink()
    again = load_data(f"{FASHION_MNIST_SEG}:32", 4, **options)
    after = [np.asarray(Image.open(path)) for path in again.test.source.split.images]
    assert len(after) == 10 and all(np.array_equal(a, b) for a, b in zip(before, after))
    assert "written anew" in caplog.text


def test_a_scene_manifest_nested_past_what_json_reads_is_damage_not_an_internal_error(valued_dataset, caplog):
    """A scenes.json of 200,000 nested brackets makes json recurse past Python's limit: the folder is written
    anew like any other damaged one (it ended the run with an internal error)."""
    options = {"root": valued_dataset, "validation": 0, "train_canvases": 8, "test_canvases": 10, "channels": 1}
    first = load_data(f"{FASHION_MNIST_SEG}:32", 4, **options)
    folder = first.test.source.split.images[0].parent
    while not (folder / "scenes.json").is_file():
        folder = folder.parent
    (folder / "scenes.json").write_text("[" * 200_000 + "]" * 200_000)
    again = load_data(f"{FASHION_MNIST_SEG}:32", 4, **options)
    assert len(again.test.source.split.images) == 10 and "written anew" in caplog.text


@pytest.mark.parametrize("spec, options, message", [
    (f"{FASHION_MNIST_SEG}:big", {}, "canvas size"),
    (f"{FASHION_MNIST_SEG}:32", {"scene": {"min_items": 3, "max_items": 2}}, "min_items"),
    (f"{FASHION_MNIST_SEG}:32", {"scene": {"colour": 1}}, "bad scene option"),
    (f"{FASHION_MNIST_SEG}:16", {"scene": {"min_items": 6, "item_sizes": (8, 8)}}, "do not fit"),
    (f"{FASHION_MNIST_DET}:32", {"channels": 2}, "channels"),
])
def test_bad_scene_options_fail_with_one_line(spec, options, message, valued_dataset):
    with pytest.raises(PrunefxError, match=message) as error:
        load_data(spec, 4, root=valued_dataset, validation=0, train_canvases=4, test_canvases=4, **options)
    assert "\n" not in str(error.value)


def test_scenes_calibrate_at_the_models_input_size():
    """`--calibrate fashion-mnist-seg:SIZE` reads training canvases; a size the model does not take is one line."""
    from prunefx.data.calibration import calibration_data
    from prunefx.graph.errors import PrunefxError
    if not fashion_mnist.DEFAULT_ROOT.is_dir():
        pytest.skip(f"{fashion_mnist.DEFAULT_ROOT} missing: apt-get install dataset-fashion-mnist")
    calibration = calibration_data("fashion-mnist-det:48", torch.zeros(4, 1, 48, 48), images=8)
    assert [tuple(batch[0].shape) for batch in calibration.batches] == [(4, 1, 48, 48)] * 2
    assert calibration.description == "8 images from fashion-mnist-det:48 (training canvases)"
    assert all(float(batch[0].std()) > 0 for batch in calibration.batches)  # real items on the canvases
    with pytest.raises(PrunefxError, match="ask for fashion-mnist-seg:32$"):
        calibration_data("fashion-mnist-seg:64", torch.zeros(4, 3, 32, 32), images=8)


def test_a_killed_runs_staging_folder_goes_with_the_next_write(tmp_path, monkeypatch):
    """A run killed while it wrote its scenes left its hidden staging folder (as large as the scenes) past every
    later run; the next write removes those of ended processes and keeps a running one's."""
    import os
    import subprocess
    import sys

    from prunefx.data import scene_data
    from prunefx.data.fashion_mnist_scenes import SceneConfig

    monkeypatch.setenv("PRUNEFX_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(scene_data, "compose_scenes", lambda *args, **kwargs: {})  # stand-in scenes, no data set
    monkeypatch.setattr(scene_data, "write_scenes", lambda scenes, staging, layout: (staging / "a.png").write_bytes(b"x"))
    arguments = ("segmentation", {"train": 1, "test": 1}, 0, SceneConfig(size=64), 0)
    folder = scene_data.scene_folder(*arguments, root=tmp_path / "none")
    ended = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                               text=True, check=True).stdout)
    killed, running = (folder.parent / f".{folder.name}-{pid}-abc123" for pid in (ended, os.getpid()))
    for leftover in (killed, running):
        leftover.mkdir()
        (leftover / "a.png").write_bytes(b"half")
    (folder / "a.png").unlink()  # damage: the next run writes the scenes anew
    assert scene_data.scene_folder(*arguments, root=tmp_path / "none") == folder
    assert sorted(path.name for path in folder.parent.iterdir()) == sorted([running.name, folder.name])
