"""A quantized model.pt2 (what `prunefx quantize` writes) read back by the other commands: `export`, `bench` and `compress` (its dense side)
take it in the INT8 lowering `quantize` delivers (INT8 weights, ONNX Runtime's or TensorRT's Q/DQ form), never
as the float weights and Q/DQ pairs a plain export gives; `quantize` and `prune` refuse it. The oracle: the files, read
back with `onnx`."""

from __future__ import annotations

import argparse

import onnx
import pytest
import torch
from torch import nn

from prunefx import compression, delivered_latency
from prunefx.bench_models import bench_model
from prunefx.cli import main
from prunefx.graph import Program, capture
from prunefx.passes import quantize_int8
from prunefx.runtime import backends

pytestmark = pytest.mark.usefixtures("one_thread")


class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.first, self.second = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1)
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        return self.head(torch.relu(self.second(torch.relu(self.first(x)))).mean((2, 3)))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("quantized")
    program = capture(Small().eval(), torch.randn(1, 3, 16, 16), name="small")
    program.save(folder / "float.pt2")
    calibration = [torch.randn(1, 3, 16, 16) for _ in range(4)]
    quantize_int8(program, config={"calibration": calibration}).program.save(folder / "int8.pt2")
    return folder


def _zero_point_types(path) -> set[int]:
    model = onnx.load(str(path))
    initializers = {init.name: init for init in model.graph.initializer}
    return {initializers[node.input[2]].data_type for node in model.graph.node if node.op_type == "QuantizeLinear"}


def _float_weights_quantized(path) -> int:
    """QuantizeLinear nodes reading a float initializer: a weight left in float, quantized at every run."""
    model = onnx.load(str(path))
    floats = {init.name for init in model.graph.initializer if init.data_type == onnx.TensorProto.FLOAT}
    return sum(node.op_type == "QuantizeLinear" and node.input[0] in floats for node in model.graph.node)


@pytest.mark.parametrize(("backend", "zero_points"), [([], {onnx.TensorProto.UINT8}),
                                                     (["--backend", "trt"], {onnx.TensorProto.INT8})])
def test_export_writes_a_quantized_model_in_an_int8_lowering(saved, tmp_path, capsys, backend, zero_points):
    out = tmp_path / "model.onnx"
    assert main(["export", str(saved / "int8.pt2"), "-o", str(out), *backend]) == 0
    assert _zero_point_types(out) == zero_points and _float_weights_quantized(out) == 0
    assert "INT8 for" in capsys.readouterr().out


def test_export_refuses_an_int8_backend_for_a_float_model(saved, tmp_path, capsys):
    assert main(["export", str(saved / "float.pt2"), "-o", str(tmp_path / "m.onnx"), "--backend", "trt"]) == 2
    assert "is not quantized" in capsys.readouterr().err and not (tmp_path / "m.onnx").exists()


def test_bench_times_a_quantized_model_in_onnx_runtimes_int8_lowering(saved, tmp_path):
    args = argparse.Namespace(batch=None, weights=None, input_shape=None, calibrate=None)
    model = bench_model(str(saved / "int8.pt2"), args, backends.get("ort"), tmp_path, "a")
    assert _zero_point_types(model.onnx) == {onnx.TensorProto.UINT8} and _float_weights_quantized(model.onnx) == 0


def test_quantize_refuses_a_quantized_model_and_writes_nothing(saved, tmp_path, capsys):
    code = main(["quantize", str(saved / "int8.pt2"), "--calibrate", str(tmp_path), "-o", str(tmp_path / "q")])
    assert code == 2 and "already quantized" in capsys.readouterr().err and not (tmp_path / "q").exists()


def test_prune_refuses_a_quantized_model_and_writes_nothing(saved, tmp_path, capsys):
    """Its activation ranges were calibrated on the unpruned layers: pruned, they would no longer hold."""
    code = main(["prune", str(saved / "int8.pt2"), "--macs", "0.5", "-o", str(tmp_path / "p")])
    err = capsys.readouterr().err
    assert code == 2 and "prune the float model, then quantize it" in err and not (tmp_path / "p").exists()


def test_compress_times_a_quantized_dense_model_in_its_int8_lowering(saved, monkeypatch):
    """compress of a quantized model (QAT fine-tuning) times its dense side as model.onnx is written."""
    timed = []

    class Timed(Exception):
        pass

    def record(pairs, settings):
        timed.extend((_zero_point_types(path), _float_weights_quantized(path)) for path, _ in pairs[:1])
        raise Timed  # the dense file is all this test reads

    monkeypatch.setattr(delivered_latency, "onnx_side_by_side", record)
    dense = Program.load(saved / "int8.pt2")
    with pytest.raises(Timed):
        delivered_latency.delivered_latency((dense, dense), (dense, dense), saved / "unused.onnx", compression.DEFAULTS)
    assert timed[0] == ({onnx.TensorProto.UINT8}, 0)
