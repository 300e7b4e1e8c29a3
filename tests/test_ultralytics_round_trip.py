"""A pruned YOLO through Ultralytics' own train, val and export (examples/ultralytics_prune_train.py).

Slow: Ultralytics trains one epoch on a tiny YOLO-format data set written here from Fashion-MNIST scenes.
Nothing is downloaded: YOLO_OFFLINE, no plots (fonts), no AMP check (CPU), no ONNX simplifier."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from prunefx.data.fashion_mnist import load_fashion_mnist
from prunefx.data.fashion_mnist_scenes import CLASSES, SceneConfig, box_list, make_scenes

pytest.importorskip("ultralytics")
Image = pytest.importorskip("PIL.Image")
REPO = Path(__file__).resolve().parents[1]


def write_yolo_data(folder: Path, *, size: int = 64, train: int = 32, val: int = 16) -> Path:
    """Fashion-MNIST scenes as a YOLO data set: PNG images, one `class cx cy w h` line per item (0-1)."""
    images, labels = load_fashion_mnist("test")
    config = SceneConfig(size=size, max_items=3)
    for split, count in (("train", train), ("val", val)):
        scenes = make_scenes(images, labels, count, split=split, config=config)
        (folder / "images" / split).mkdir(parents=True)
        (folder / "labels" / split).mkdir(parents=True)
        for index in range(count):
            Image.fromarray(scenes.images[index, 0].numpy()).convert("RGB").save(
                folder / "images" / split / f"{index}.png")
            boxes, classes = box_list(scenes.boxes[index])
            lines = [f"{c} {(b[0] + b[2]) / 2 / size:.6f} {(b[1] + b[3]) / 2 / size:.6f} "
                     f"{(b[2] - b[0]) / size:.6f} {(b[3] - b[1]) / size:.6f}" for b, c in zip(boxes.tolist(),
                                                                                        classes.tolist())]
            (folder / "labels" / split / f"{index}.txt").write_text("\n".join(lines) + "\n")
    data = folder / "data.yaml"
    names = {i: name for i, name in enumerate(CLASSES[1:])}
    data.write_text(json.dumps({"path": str(folder), "train": "images/train", "val": "images/val", "names": names}))
    return data


# A YOLOv8-shaped detector small enough for the main lane: Conv, C2f (split halves pruned apart) and Detect.
TOY_YAML = """nc: 9
backbone:
  - [-1, 1, Conv, [16, 3, 2]]
  - [-1, 1, Conv, [32, 3, 2]]
  - [-1, 1, C2f, [32, True]]
  - [-1, 1, Conv, [64, 3, 2]]
  - [-1, 1, C2f, [64, True]]
head:
  - [[4], 1, Detect, [nc]]
"""


def offline_environment(tmp_path: Path) -> dict:
    env = dict(os.environ, YOLO_OFFLINE="1", YOLO_CONFIG_DIR=str(tmp_path / "yolo_settings"),
               OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    return env


def run_example(tmp_path: Path, model: str, options: list[str], *, train: int = 32, val: int = 16,
                batch: int = 8, macs_tolerance: float = 0.03) -> dict:
    data = write_yolo_data(tmp_path / "data", train=train, val=val)
    output = tmp_path / "out"
    run = subprocess.run([sys.executable, "examples/ultralytics_prune_train.py", f"ultralytics:{model}",
                          "--data", str(data), "--macs", "0.5", "--epochs", "1", "--imgsz", "64", "--batch", str(batch),
                          *options, "-o", str(output)], cwd=REPO, env=offline_environment(tmp_path),
                         capture_output=True, text=True, timeout=1800)
    assert run.returncode == 0, run.stderr[-3000:]
    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["widths_kept_by_training"]
    assert metrics["macs_kept"] == pytest.approx(0.5, rel=macs_tolerance)
    assert 0.0 <= metrics["map50_95"] <= metrics["map50"] <= 1.0
    assert metrics["onnx_relative_difference"] < 1e-4
    assert (output / "weights.pt").is_file() and (output / "model.onnx").is_file()
    return metrics


def test_toy_yolo_prunes_while_ultralytics_trains(tmp_path):
    """The main lane's case (about 15 s of CPU): CPD's two cuts inside Ultralytics' trainer with KD from the
    dense model, then its val and ONNX export, on a toy YOLO (8 training images, one optimizer step a batch)."""
    toy = tmp_path / "toy.yaml"
    toy.write_text(TOY_YAML)
    metrics = run_example(tmp_path, str(toy), ["--nbs", "4", "--cpd", "1"], train=8, val=4, batch=4)
    assert [cut["step"] for cut in metrics["cpd_cuts"]] == [1, 2]




# Minutes each (captures of a YOLO, Ultralytics' training): the zoo lane, not `make test`'s 20 minutes.
@pytest.mark.slow
@pytest.mark.zoo
# Ultralytics accumulates gradients up to `nbs` (64) images per optimizer step: the CPD case sets it to the
# batch, so that its 2 cuts, one step apart, come within one epoch of 4 batches.
@pytest.mark.parametrize("model, options", [("yolov8n.yaml", []), ("yolo11n.yaml", []), ("yolo26n.yaml", []),
                                            ("yolov10n.yaml", []),
                                            ("yolov8n.yaml", ["--nbs", "8", "--cpd", "1"]),
                                            ("yolo26n.yaml", ["--nbs", "8", "--cpd", "1"]),
                                            ("yolo11n.yaml", ["--nbs", "8", "--cpd", "1"])])
def test_pruned_yolo_trains_validates_and_exports(tmp_path, model, options):
    metrics = run_example(tmp_path, model, options, macs_tolerance=0.05)
    if "--cpd" in options:  # two cuts while Ultralytics trained
        assert [cut["step"] for cut in metrics["cpd_cuts"]] == [1, 2]


@pytest.mark.slow
@pytest.mark.zoo
def test_classification_yolo_prunes_and_writes_back():
    import torch
    import torch.utils._pytree as pytree

    from prunefx.graph import capture, count
    from prunefx.interop.ultralytics_bridge import keep_nodes, register_resizers
    from prunefx.interop.write_back import to_module
    from prunefx.models import build_model
    from prunefx.passes.remove_channels import remove_channels

    model = build_model("ultralytics:yolo11n-cls.yaml", image_size=64).module
    inputs = torch.rand(2, 3, 64, 64)
    program = capture(model, inputs, name="yolo11n-cls").eval()
    dense = count(program).macs
    remove_channels(program, config={"macs": 0.5, "importance": "l2", "round_to": 8, "keep": keep_nodes(program)})
    assert count(program).macs / dense == pytest.approx(0.5, rel=0.03)
    register_resizers()
    pruned = to_module(program, model, config=False).eval()
    assert type(pruned).__name__ == "ClassificationModel"
    other = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        for got, want in zip(pytree.tree_leaves(pruned(other)), pytree.tree_leaves(program(other)), strict=True):
            assert torch.allclose(got, want, rtol=1e-5, atol=1e-6)


def test_example_refuses_in_one_line_without_a_traceback(tmp_path):
    data = tmp_path / "data.yaml"
    data.write_text(json.dumps({"path": str(tmp_path), "train": "images", "val": "images", "names": {0: "a"}}))
    run = subprocess.run([sys.executable, "examples/ultralytics_prune_train.py", "yolov8n.yaml", "--data", str(data),
                          "-o", str(tmp_path / "out")], cwd=REPO, env=offline_environment(tmp_path),
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 2
    assert "Traceback" not in run.stderr and run.stderr.strip().splitlines()[-1].startswith("error: name an")


@pytest.mark.parametrize("name", ["yolo11n-seg.yaml", "yolo11n-pose.yaml", "yolo11n-obb.yaml", "yolo11n.yaml"])
def test_a_task_yaml_is_built_as_the_class_ultralytics_builds_for_its_task(name):
    """The class carries the task's loss: a segmenter built as a DetectionModel (as every yaml but a classifier's
    was) trains a module written back with the detection loss alone. The oracle: Ultralytics' own YOLO(name)."""
    from ultralytics import YOLO

    from prunefx.models import build_model

    assert type(build_model(f"ultralytics:{name}", image_size=64).module) is type(YOLO(name).model)
