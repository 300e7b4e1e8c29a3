"""Each how-to's example script runs at toy size (a 28x28 ResNet-20, few timed runs), so none of them rots;
its outputs are checked from the files it wrote, not from what it printed."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import onnx
import pytest

import prunefx

ROOT = Path(__file__).resolve().parents[1]
TOY = ["--model", "prunefx:resnet20", "--input-shape", "1x1x28x28"]


def example(name: str):
    """examples/NAME.py as a module, loaded once per process (one registers a torch.library operator)."""
    key = f"prunefx_example_{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, ROOT / "examples" / f"{name}.py")
        sys.modules[key] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[key])
    return sys.modules[key]


def macs_fraction(pruned: Path, dense_reference: str = "prunefx:resnet20") -> float:
    import torch

    from prunefx.models import build_model

    dense = prunefx.capture(build_model(dense_reference).module, torch.randn(1, 1, 28, 28))
    return prunefx.count(prunefx.load(pruned)).macs / prunefx.count(dense).macs


@pytest.mark.slow
@pytest.mark.timing  # its search accepts only a measured speed-up: alone after the parallel lane, on a quiet machine
def test_prune_to_speedup_meets_its_budget_and_writes_the_files(tmp_path):
    summary = example("prune_to_speedup").main(
        [*TOY, "--speedup", "1.2", "--threads", "1", "--runs", "10", "-o", str(tmp_path)])
    assert summary["search_speedup"] >= 1.2 * 0.95  # accepted on a confirmed measurement
    assert {"dense.onnx", "model.onnx", "model.pt2", "summary.json"} <= {p.name for p in tmp_path.iterdir()}
    assert macs_fraction(tmp_path / "model.pt2") == pytest.approx(summary["macs_kept"])  # what was written
    assert json.loads((tmp_path / "summary.json").read_text())["asked"] == 1.2


@pytest.mark.slow
def test_int8_after_pruning_writes_qdq_files_for_both_runtimes(tmp_path):
    summary = example("int8_after_pruning").main(
        [*TOY, "--round-to", "16", "--calibration-batches", "2", "-o", str(tmp_path)])
    assert summary["macs_kept"] < 0.55
    assert macs_fraction(tmp_path / "model.pt2") == pytest.approx(summary["macs_kept"])  # what was written
    for name in ("model_trt.onnx", "model_ort.onnx"):
        operators = {node.op_type for node in onnx.load(tmp_path / name).graph.node}
        assert {"QuantizeLinear", "DequantizeLinear"} <= operators or "QLinearConv" in operators, name
    trt = onnx.load(tmp_path / "model_trt.onnx").graph
    int8 = onnx.TensorProto.INT8
    assert any(init.data_type == int8 for init in trt.initializer)  # INT8 weights, as TensorRT wants


@pytest.mark.slow
def test_custom_channel_rule_unblocks_the_operator_and_leaves_the_rule_table_as_it_was(tmp_path):
    from prunefx.graph.channels.rules import RULES

    module = example("custom_channel_rule")
    summary = module.main(["--size", "16"])
    assert any("prunefx_example.scaled_relu" in op for group in summary["blocked_before"] for op in group["operators"])
    assert summary["blocked_after"] == [] and summary["width_a"] < 32
    assert module.torch.ops.prunefx_example.scaled_relu.default not in RULES


@pytest.mark.slow
def test_jetson_profile_writes_checked_files_and_benches_them(tmp_path, capsys):
    summary = example("jetson_profile").main([*TOY, "--runs", "5", "-o", str(tmp_path)])
    assert summary["bench_status"] == 0
    assert all(error < 1e-4 for error in summary["parity"].values())
    printed = capsys.readouterr().out
    assert "speed-up of" in printed and "--backend trtexec" in printed
    assert macs_fraction_of_onnx(tmp_path) < 1.0


def macs_fraction_of_onnx(folder: Path) -> float:
    """Weights in the pruned file against the dense file: fewer once channels are gone."""
    def weights(path: Path) -> int:
        import numpy as np

        return sum(int(np.prod(init.dims)) for init in onnx.load(path).graph.initializer)
    return weights(folder / "model.onnx") / weights(folder / "dense.onnx")


@pytest.mark.slow
def test_your_data_samples_are_read_back_in_their_layouts(tmp_path):
    """The stand-ins docs/your-data.md runs its commands on: prunefx detects each layout from the path alone,
    the YOLO labels hold the COCO file's boxes, and the detector is a YOLO-layout program at its input size."""
    import torch
    import yaml

    from prunefx.data.formats import detect_format
    from prunefx.models import build_model

    summary = example("your_data_samples").main(
        ["--data", str(tmp_path / "data"), "--models", str(tmp_path), "--train", "4", "--val", "2",
         "--canvas", "32", "--image-size", "64", "--batch", "2"])
    expected = {"coco": "coco", "parts": "yolo", "roads": "masks"}
    for folder, layout in expected.items():
        path = tmp_path / "data" / folder
        assert summary["data"][str(path)] == layout
        assert detect_format(path / "data.yaml" if layout == "yolo" else path) == layout
    coco = json.loads((tmp_path / "data" / "coco" / "annotations" / "instances_val.json").read_text())
    first = min(coco["images"], key=lambda image: image["id"])
    x, y, w, h = next(a["bbox"] for a in coco["annotations"] if a["image_id"] == first["id"])
    rows = (tmp_path / "data" / "parts" / "labels" / "val" / first["file_name"]).with_suffix(".txt").read_text()
    centre = [float(v) * 32 for v in rows.splitlines()[0].split()[1:3]]
    assert centre == pytest.approx([x + w / 2, y + h / 2], abs=1e-3)
    assert yaml.safe_load((tmp_path / "data" / "parts" / "data.yaml").read_text())["val"] == "images/val"
    detector = prunefx.load(tmp_path / "detector.pt2")
    assert detector.run_example().shape == (2, 14, (64 // 16) ** 2)
    segmenter = build_model(f"{tmp_path / 'segmenter.py'}:build").module
    assert segmenter(torch.rand(1, 3, 32, 32)).shape == (1, 11, 32, 32)
