"""Fuzzers, one per reader (COCO, YOLO, mask folders, ImageFolder, ONNX for `prunefx check`): a clean input is
mutated many ways (seeded), by bytes and by hostile values put into its fields. Every outcome must be a
successful read or one PrunefxError line; never another exception, a hang, or an error quoting a file
outside the data folder (a planted token beside it never shows, and its access time never moves)."""

from __future__ import annotations

import json
import os
import random

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from prunefx.data.coco import coco_splits
from prunefx.data.masks import mask_splits
from prunefx.data.samples import LabelledImages
from prunefx.data.splits import image_folder_data
from prunefx.data.yolo import yolo_splits
from prunefx.graph import PrunefxError
from prunefx.runtime.check.readiness import check_file
from prunefx.runtime.onnx.bounds import check_value_sizes

pytestmark = pytest.mark.slow
SECRET = "TOKEN-5d1e-planted-outside"
CASES = 300
HOSTILE_VALUES = [float("nan"), float("inf"), -1, 0, 2**63, 1e308, "x", "", "../secret.txt", "/etc/passwd",
                  None, True, [], {}, [1, 2, 3], [[[[]]]], {"id": 1}, "\x1b[31mred", "é" * 300]


def _png(path, size=(8, 8), mode="RGB", value=7):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value if mode != "RGB" else (value, value, value)).save(path)


@pytest.fixture
def planted(tmp_path):
    """A secret file beside the data folder, with its access time set far in the past."""
    secret = tmp_path / "secret.txt"
    secret.write_text(SECRET + "\n")
    os.utime(secret, (1_000_000, 1_000_000))
    return secret


def _outcome(call, secret) -> str:
    """'read' or 'refused' (one PrunefxError line); any other exception fails the test."""
    try:
        call()
    except PrunefxError as error:
        message = str(error)
        assert "\n" not in message and SECRET not in message and len(message) < 2000, message
        return "refused"
    finally:
        assert os.stat(secret).st_atime == 1_000_000, "the planted file was read"
    return "read"


def _both_seen(outcomes: list[str]) -> None:
    """The mutations both kept some inputs readable and broke others: the fuzzer reached past the parser."""
    assert {"read", "refused"} <= set(outcomes), sorted(set(outcomes))


def _mutate_bytes(data: bytes, rng: random.Random) -> bytes:
    data = bytearray(data)
    kind = rng.randrange(4)
    if kind == 0 and data:  # flip bytes
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
    elif kind == 1:  # cut
        data = data[:rng.randrange(len(data) + 1)]
    elif kind == 2:  # insert
        at = rng.randrange(len(data) + 1)
        data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
    else:  # repeat a slice
        at = rng.randrange(len(data) + 1)
        data[at:at] = data[at:at + rng.randint(1, 32)] * rng.randint(2, 50)
    return bytes(data)


def _replace_a_value(content, rng: random.Random):
    """`content` (a JSON value) with one of its values, anywhere, replaced by a hostile one."""
    if isinstance(content, dict) and content and rng.random() < 0.8:
        key = rng.choice(sorted(content))
        content[key] = _replace_a_value(content[key], rng)
        return content
    if isinstance(content, list) and content and rng.random() < 0.8:
        at = rng.randrange(len(content))
        content[at] = _replace_a_value(content[at], rng)
        return content
    return rng.choice(HOSTILE_VALUES)


# ---- COCO -------------------------------------------------------------------------------------------

COCO = {"images": [{"id": 1, "file_name": "a.png", "width": 8, "height": 8},
                   {"id": 2, "file_name": "b.png", "width": 8, "height": 8}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 2, 2], "iscrowd": 0},
                        {"id": 2, "image_id": 2, "category_id": 2, "bbox": [0, 0, 8, 8]}],
        "categories": [{"id": 1, "name": "one"}, {"id": 2, "name": "two"}]}


def _coco(root):
    for split in ("train", "val"):
        for name in ("a.png", "b.png"):
            _png(root / split / name)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    for split in ("train", "val"):
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(COCO))
    return root


def test_fuzzed_coco_annotations(tmp_path, planted):
    rng = random.Random(0)
    root = _coco(tmp_path / "coco")
    train = root / "annotations" / "instances_train.json"
    outcomes = []
    for case in range(CASES):
        if case % 2:
            train.write_bytes(_mutate_bytes(json.dumps(COCO).encode(), rng))
        else:
            train.write_text(json.dumps(_replace_a_value(json.loads(json.dumps(COCO)), rng)))
        outcomes.append(_outcome(lambda: coco_splits(root), planted))
    _both_seen(outcomes)


# ---- YOLO -------------------------------------------------------------------------------------------

YAML = "train: images/train\nval: images/val\nnames: [one, two]\n"
LABEL = "0 0.5 0.5 0.25 0.25\n1 0.2 0.3 0.1 0.1\n"


def test_fuzzed_yolo_yaml_and_labels(tmp_path, planted):
    rng = random.Random(1)
    root = tmp_path / "yolo"
    for split in ("train", "val"):
        _png(root / "images" / split / "a.png")
        (root / "labels" / split).mkdir(parents=True)
        (root / "labels" / split / "a.txt").write_text(LABEL)
    outcomes = []
    for case in range(CASES):
        (root / "data.yaml").write_bytes(_mutate_bytes(YAML.encode(), rng) if case % 3 == 0 else YAML.encode())
        label = LABEL.encode()
        if case % 3 == 1:
            label = _mutate_bytes(label, rng)
        elif case % 3 == 2:
            fields = LABEL.split()
            fields[rng.randrange(len(fields))] = str(rng.choice(HOSTILE_VALUES))
            label = (" ".join(fields[:5]) + "\n" + " ".join(fields[5:]) + "\n").encode()
        (root / "labels" / "train" / "a.txt").write_bytes(label)
        outcomes.append(_outcome(lambda: yolo_splits(root), planted))
    _both_seen(outcomes)


# ---- mask folders -----------------------------------------------------------------------------------

def test_fuzzed_masks_and_class_lists(tmp_path, planted):
    rng = random.Random(2)
    root = tmp_path / "masks"
    for split in ("train", "val"):
        _png(root / "images" / split / "a.png")
        _png(root / "masks" / split / "a.png", mode="L", value=1)
    clean_mask = (root / "masks" / "train" / "a.png").read_bytes()
    outcomes = []
    for case in range(CASES):
        (root / "masks" / "train" / "a.png").write_bytes(_mutate_bytes(clean_mask, rng) if case % 2 else clean_mask)
        (root / "classes.txt").write_bytes(_mutate_bytes(b"zero\none\n", rng) if case % 2 == 0 else b"zero\none\n")
        (root / "palette.txt").unlink(missing_ok=True)
        if case % 5 == 0:
            (root / "palette.txt").write_bytes(_mutate_bytes(b"0 0 0 zero\n1 1 1 one\n", rng))
        outcomes.append(_outcome(lambda: _open_and_read(mask_splits(root)[0]), planted))
    _both_seen(outcomes)


def _open_and_read(splits) -> None:
    """Every item of every split, as a training step would read it."""
    for split in splits.values():
        images = LabelledImages(split, size=(8, 8), channels=3, ignore_index=255)
        for index in range(len(images)):
            images[index]


# ---- ImageFolder ------------------------------------------------------------------------------------

def test_fuzzed_image_folder_images(tmp_path, planted):
    rng = random.Random(3)
    root = tmp_path / "folders"
    for split in ("train", "val"):
        _png(root / split / "cat" / "a.png")
    clean = (root / "train" / "cat" / "a.png").read_bytes()
    outcomes = []
    for _ in range(CASES // 2):
        (root / "train" / "cat" / "a.png").write_bytes(_mutate_bytes(clean, rng))
        read = lambda: list(image_folder_data(root, 1, image_size=8, augment=False).train)  # noqa: E731
        outcomes.append(_outcome(read, planted))
    _both_seen(outcomes)


# ---- ONNX for `prunefx check` and `bench` -----------------------------------------------------------------------

def _onnx_model() -> bytes:
    weight = numpy_helper.from_array(np.tile(np.array([1, 0, 1, 0], np.int8), (8, 1)).reshape(8, 4, 1, 1), "w")
    inits = [weight, numpy_helper.from_array(np.full(8, 0.1, np.float32), "s"),
             numpy_helper.from_array(np.zeros(8, np.int8), "z")]
    nodes = [helper.make_node("DequantizeLinear", ["w", "s", "z"], ["wq"], axis=0, name="dq"),
             helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 1, 3, 2], name="t"),
             helper.make_node("Conv", ["xt", "wq"], ["c"], name="conv"),
             helper.make_node("Relu", ["c"], ["y"], name="relu")]
    graph = helper.make_graph(nodes, "fuzz", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]).SerializeToString()


def test_fuzzed_onnx_files_for_check(tmp_path, planted):
    rng = random.Random(4)
    clean = _onnx_model()
    path = tmp_path / "model" / "m.onnx"
    path.parent.mkdir()
    outcomes = []
    for case in range(CASES * 2):
        path.write_bytes(_mutate_bytes(clean, rng))
        target = ("trt10", "ort")[case % 2]
        outcomes.append(_outcome(lambda: check_file(path, target), planted))  # noqa: B023 - called at once
        _outcome(lambda: check_value_sizes(path), planted)  # bench's check before ONNX Runtime sees the file
    onnx.load_model_from_string(clean)  # the clean file is a model (the mutations start from a valid one)
    _both_seen(outcomes)
