"""runtime/measure/deployment_report.py: the Markdown + JSON + PNG report of accuracy against measured latency, on
variants measured with ONNX Runtime here, and at the end of a real `prunefx compress` run in tests/test_compress.py."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from torch import nn

from prunefx.graph import capture, count
from prunefx.passes.remove_channels import remove_channels
from prunefx.passes.training.engine import evaluate
from prunefx.runtime import (
    BackendUnavailableError,
    MeasurementError,
    Variant,
    compare_latency,
    export_onnx,
    onnx_runner,
    read_variants,
    write_chart,
    write_deployment_report,
)

torch.set_num_threads(1)


def _tiny_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                         nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 4))


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    """Dense and pruned tiny CNNs, accuracy on labelled data and ONNX Runtime latency measured alternately."""
    tmp = tmp_path_factory.mktemp("variants")
    dense = capture(_tiny_cnn().eval(), torch.randn(1, 3, 16, 16), name="tiny").eval()
    pruned = remove_channels(dense.clone(), config={"macs": 0.5, "round_to": 4}).program.eval()
    generator = torch.Generator().manual_seed(1)
    images = [torch.randn(1, 3, 16, 16, generator=generator) for _ in range(48)]
    with torch.no_grad():  # labels are the dense model's answers: dense scores 100 %, pruned what it keeps
        batches = [(x, dense(x).argmax(1)) for x in images]
    accuracy = [evaluate(program, batches)["accuracy"] for program in (dense, pruned)]
    files = [export_onnx(program, tmp / f"{name}.onnx").path for program, name in ((dense, "d"), (pruned, "p"))]
    latency = compare_latency(onnx_runner(files[0], [images[0]], threads=1), onnx_runner(files[1], [images[0]], threads=1),
                              warmup=2, runs=15)
    costs = [count(program) for program in (dense, pruned)]
    return [Variant(name=name, accuracy=acc, latency_ms=stats.median_ms, p90_ms=stats.p90_ms, p99_ms=stats.p99_ms,
                    backend="onnxruntime (1 thread)", macs=cost.macs, params=cost.params)
            for name, acc, stats, cost in zip(("dense", "pruned 0.5"), accuracy, (latency.a, latency.b), costs)]


def test_report_of_measured_variants(measured, tmp_path, png_pixels):
    dense, pruned = measured
    assert dense.accuracy == 1.0 and 0 <= pruned.accuracy <= 1 and pruned.macs < dense.macs
    paths = write_deployment_report(measured, tmp_path / "report", title="tiny CNN on ONNX Runtime",
                                    extra={"machine": "ci"})
    assert set(paths) == {"markdown", "json", "chart"} and all(path.is_file() for path in paths.values())
    pixels = png_pixels(paths["chart"])
    assert pixels.shape[0] > 300 and pixels.shape[1] > 500
    assert (pixels < 200).any() and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 10  # drawn on, not blank

    markdown = paths["markdown"].read_text()
    assert markdown.startswith("# tiny CNN on ONNX Runtime\n") and "![accuracy against measured latency]" in markdown
    rows = [line for line in markdown.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert [row.split(" | ")[0].lstrip("| ") for row in rows] == ["dense", "pruned 0.5"]
    assert "| 100.00 % (test) |" in rows[0] and "| 1.00x |" in rows[0]
    assert f"{dense.latency_ms / pruned.latency_ms:.2f}x" in rows[1]
    assert f"{pruned.latency_ms:.3f}" in rows[1] and f"{pruned.macs / 1e6:.2f} M" in rows[1]

    data = json.loads(paths["json"].read_text())
    assert data["title"] == "tiny CNN on ONNX Runtime" and data["machine"] == "ci"
    assert read_variants(paths["json"]) == measured  # the JSON round-trips exactly
    assert read_variants(data) == measured


def test_chart_lists_variants_without_accuracy(tmp_path, png_pixels):
    variants = [Variant("fp32", 0.91, 2.0, "tensorrt fp32"), Variant("fp16", None, 1.1, "tensorrt fp16")]
    path = write_chart(variants, tmp_path / "chart.png", title="precisions")
    assert png_pixels(path).shape[2] == 3
    markdown = write_deployment_report(variants, tmp_path / "r")["markdown"].read_text()
    assert "| fp16 | tensorrt fp16 | n/a | 1.100 | n/a | n/a | 1.82x |" in markdown


def test_nan_percentiles_become_null(tmp_path):
    variant = Variant("trtexec 8.2", 0.5, 3.0, "trtexec", p90_ms=float("nan"))
    assert variant.to_dict()["p90_ms"] is None
    paths = write_deployment_report([variant], tmp_path)
    assert json.loads(paths["json"].read_text())["variants"][0]["p90_ms"] is None
    assert "| 3.000 | n/a |" in paths["markdown"].read_text()


@pytest.mark.parametrize("kwargs, message", [
    ({"latency_ms": 0.0}, "latency must be a positive number"),
    ({"latency_ms": float("nan")}, "latency must be a positive number"),
    ({"accuracy": 91.0}, "accuracy is a fraction"),
    ({"accuracy": "0.9"}, "accuracy is a fraction"),  # a TypeError from the comparison before
    ({"latency_ms": True}, "latency must be a positive number"),  # read as 1 ms before
])
def test_bad_variants(kwargs, message):
    with pytest.raises(MeasurementError, match=message):
        Variant(**{"name": "v", "accuracy": 0.5, "latency_ms": 1.0, "backend": "ort", **kwargs})


def test_a_report_that_is_missing_or_no_report_is_said_so(tmp_path):
    # a missing path was parsed as JSON text: a JSONDecodeError about its first character
    with pytest.raises(MeasurementError, match="no report file .*typo.json"):
        read_variants(str(tmp_path / "typo.json"))
    with pytest.raises(MeasurementError, match="no report file"):
        read_variants(tmp_path)  # a folder
    (tmp_path / "other.json").write_text('{"runs": []}')
    with pytest.raises(MeasurementError, match="not a deployment report .*'variants'"):
        read_variants(tmp_path / "other.json")


def test_empty_report_and_missing_matplotlib(tmp_path, monkeypatch):
    with pytest.raises(MeasurementError, match="at least one measured variant"):
        write_deployment_report([], tmp_path)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(BackendUnavailableError, match="pip install 'matplotlib>=3.7'"):
        write_chart([Variant("a", 0.5, 1.0, "ort")], tmp_path / "x.png")


# --- the end of a real compress run --------------------------------------------------------------
