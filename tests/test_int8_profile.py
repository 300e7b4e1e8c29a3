"""benchmarks/int8_profile.py splits ONNX Runtime's kernel time into integer operators, Quantize/Dequantize
conversions and float operators: checked on real files of a small network against the op types of the graph ONNX
Runtime ran (read from its optimized model with `onnx`, not from the profile being split)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import onnx
import pytest
import torch

from prunefx.graph import capture

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _benchmark(name: str):
    if str(BENCHMARKS) not in sys.path:  # the benchmarks import their siblings
        sys.path.insert(0, str(BENCHMARKS))
    return importlib.import_module(name)


def _network() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.Conv2d(16, 16, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(16, 10)).eval()


@pytest.mark.slow
def test_kernel_time_split_into_integer_conversions_and_float_adds_up_and_follows_the_graph_run(tmp_path):
    profile, latency = _benchmark("int8_profile"), _benchmark("int8_latency")
    x = torch.randn(1, 3, 32, 32)
    program = capture(_network(), x, name="small").eval()
    files = {"fp32": latency.export_onnx(program, tmp_path / "fp32.onnx").path,
             "int8": latency.int8_file(program, tmp_path / "int8.onnx", [(torch.randn(1, 3, 32, 32),)] * 4, "mse")}
    sessions = {name: profile.profiled_session(path, tmp_path) for name, path in files.items()}
    profile.run_interleaved([session for session, _ in sessions.values()], x.numpy(), runs=10, warmup=2)
    for name, (session, optimized) in sessions.items():
        times = profile.kernel_times(session, optimized, warmup=2)
        by_kind = times["kernel_ms_by_kind"]
        assert sum(by_kind.values()) == pytest.approx(times["kernel_ms_per_run"], rel=1e-9)
        ran = {node.op_type for node in onnx.load(optimized).graph.node}
        integer_ops = {op for op in ran if op.startswith("QLinear") or op == "QGemm" or "Integer" in op}
        if name == "fp32":
            assert not integer_ops and by_kind["integer"] == 0 and by_kind["conversions"] == 0
            assert by_kind["float"] > 0
        else:
            assert integer_ops, f"no integer operator in {sorted(ran)}"
            assert by_kind["integer"] > 0
            assert (by_kind["conversions"] > 0) == bool(ran & {"QuantizeLinear", "DequantizeLinear"})


def test_operator_kinds():
    kind = _benchmark("int8_profile").operator_kind
    assert [kind(op) for op in ("QLinearConv", "QGemm", "MatMulIntegerToFloat", "ConvInteger", "QLinearAdd")] == \
        ["integer"] * 5
    assert [kind(op) for op in ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear")] == ["conversions"] * 3
    assert [kind(op) for op in ("Conv", "QuickGelu", "Transpose", "ReorderOutput", "Softmax")] == ["float"] * 5
