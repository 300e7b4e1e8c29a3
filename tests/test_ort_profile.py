"""`prunefx profile --backend ort`: one row per node ONNX Runtime runs, read from its own profiler. Checked against
the optimised graph ONNX Runtime writes for the same file (the nodes it runs, from the file, not the profile)."""

from __future__ import annotations

import json
from collections import Counter

import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from prunefx.cli import main
from prunefx.graph import capture
from prunefx.runtime import export_onnx
from prunefx.runtime.ort.kernel_profile import kernel_ms_by_node


def _event(name: str, ts: int, dur: int, op: str | None = None) -> dict:
    if op is None:
        return {"cat": "Session", "name": name, "ts": ts, "dur": dur}
    return {"cat": "Node", "name": f"{name}_kernel_time", "ts": ts, "dur": dur, "args": {"op_name": op}}


def test_each_nodes_median_over_the_timed_runs_in_the_order_they_ran():
    events = [_event("model_run", 0, 50), _event("model_run", 100, 50), _event("model_run", 200, 50),
              _event("model_run", 300, 50)]
    for start, (conv, relu) in zip((0, 100, 200, 300), ((99, 99), (10, 1), (30, 3), (20, 2))):
        events += [_event("relu", start + 40, relu, "Relu"), _event("conv", start + 5, conv, "Conv")]
    # the first run left out; medians of 10, 30, 20 and of 1, 3, 2 (microseconds in, milliseconds out)
    assert kernel_ms_by_node(events, skip=1) == {"conv": ("Conv", pytest.approx(0.020)),
                                                 "relu": ("Relu", pytest.approx(0.002))}
    assert list(kernel_ms_by_node(events, skip=1)) == ["conv", "relu"]


@pytest.mark.slow
def test_the_profile_has_a_row_for_each_node_onnx_runtime_runs(tmp_path, capsys):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1),
                          nn.BatchNorm2d(32), nn.Sigmoid(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(32, 10)).eval()
    path = export_onnx(capture(model, torch.randn(1, 3, 32, 32), name="small").eval(), tmp_path / "small.onnx").path
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    ran = Counter(node.op_type for node in onnx.load(options.optimized_model_filepath).graph.node)

    assert main(["profile", str(path), "--backend", "ort", "--threads", "1", "--runs", "5", "--warmup", "1",
                 "-o", str(tmp_path / "profile.json")]) == 0
    profile = json.loads((tmp_path / "profile.json").read_text())
    assert profile["backend"] == "ort" and profile["source"] == "onnxruntime" and profile["runs"] == 5
    assert Counter(row["layer_type"] for row in profile["layers"]) == ran
    assert sum(row["share"] for row in profile["layers"]) == pytest.approx(1.0)
    assert profile["total_ms"] == pytest.approx(sum(row["median_ms"] for row in profile["layers"]))
    assert all(row["precision"] == "fp32" and row["median_ms"] >= 0 for row in profile["layers"])
    # a node ONNX Runtime kept under its own name, or wrote into its blocked layout, names the module it computes
    assert any(row["scopes"] for row in profile["layers"])
    printed = capsys.readouterr().out
    assert "onnxruntime" in printed and "sparse" not in printed  # ONNX Runtime's profile cannot tell sparse kernels
