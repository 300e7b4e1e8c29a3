"""`prunefx quantize --backend ort|trt`: model.onnx is the file lowered for the chosen runtime, read back with
`onnx`; the two named files stay. A backend that does not exist, calibration images of another shape and a
model with no quantizable layer are one-line errors, exit 2, nothing written."""

from __future__ import annotations

import functools
import io
import json
import logging
import sys

import onnx
import pytest
import torch
import tqdm

from prunefx.cli import main
from prunefx.cli.commands import quantize as quantize_command
from prunefx.data import fashion_mnist
from prunefx.graph import capture
from prunefx.graph import progress as graph_progress
from prunefx.passes import quantize_int8
from prunefx.runtime import OnnxExportError, export_quantized_onnx

needs_fashion_mnist = pytest.mark.skipif(not fashion_mnist.DEFAULT_ROOT.is_dir(),
                                         reason=f"{fashion_mnist.DEFAULT_ROOT} missing: apt-get install "
                                                "dataset-fashion-mnist")


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _zero_point_types(model: onnx.ModelProto) -> set[int]:
    inits = {init.name: init for init in model.graph.initializer}
    return {inits[node.input[2]].data_type for node in model.graph.node if node.op_type == "QuantizeLinear"}


@pytest.mark.slow  # about 60 s: calibration, two exports, parity and a short latency comparison
@needs_fashion_mnist
def test_backend_trt_delivers_the_symmetric_s8_file_as_model_onnx(tmp_path, one_thread, monkeypatch):
    """On a terminal, the export's steps are counted to the last: the export, then each file's parity and
    prunefx check's verdicts (the oracle: two files, 1 + 2 * 2 steps)."""
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    monkeypatch.setattr(graph_progress, "tqdm", functools.partial(tqdm.tqdm, mininterval=0, miniters=1))
    torch.manual_seed(0)
    code = main(["quantize", "prunefx:resnet20", "--calibrate", "fashion-mnist", "--calibration-images", "64",
                 "--backend", "trt", "--runs", "3", "--threads", "1", "-o", str(tmp_path / "q")])
    assert code == 0, terminal.getvalue()
    draws = [line for line in terminal.getvalue().split("\r") if line.startswith("exporting")]
    assert "0/5 " in draws[0] and "5/5 " in draws[-1]
    folder = tmp_path / "q"
    assert (folder / "model.onnx").read_bytes() == (folder / "model_trt.onnx").read_bytes()
    assert _zero_point_types(onnx.load(str(folder / "model.onnx"))) == {onnx.TensorProto.INT8}
    assert _zero_point_types(onnx.load(str(folder / "model_ort.onnx"))) == {onnx.TensorProto.UINT8}
    report = json.loads((folder / "report.json").read_text())
    assert report["backend"] == "trt" and report["model.onnx"] == "model_trt.onnx"
    readiness = report["readiness"]  # prunefx check on both files: no error for the runtime each is lowered for
    assert [readiness["model_trt.onnx"][t]["errors"] for t in ("trt10", "trt11")] == [0, 0]
    assert readiness["model_ort.onnx"]["ort"]["errors"] == 0


def test_unknown_backend_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys):
    code = main(["quantize", "prunefx:resnet20", "--calibrate", "fashion-mnist", "--backend", "gpu",
                 "-o", str(tmp_path / "never")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "invalid choice: 'gpu'" in err[-1] and not (tmp_path / "never").exists()


@pytest.mark.parametrize("method", [[], ["--method", "max"]])
def test_a_percentile_the_method_does_not_read_is_refused_not_ignored(tmp_path, capsys, method):
    code = main(["quantize", "prunefx:resnet20", "--calibrate", "fashion-mnist", *method, "--percentile", "99",
                 "-o", str(tmp_path / "never")])
    line = _one_line_exit_2(code, capsys)
    assert "--percentile: only --method percentile reads it" in line and not (tmp_path / "never").exists()


class _PoolOnly(torch.nn.Module):
    """Nothing to quantize: no convolution, linear or matmul."""

    def forward(self, x):
        return torch.nn.functional.adaptive_avg_pool2d(torch.relu(x), 1).flatten(1)


def _saved(module: torch.nn.Module, shape: tuple[int, ...], path) -> str:
    capture(module.eval(), torch.randn(*shape), name=path.stem).save(path)
    return str(path)


def _one_line_exit_2(code: int, capsys) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in captured.err, captured.err
    assert lines[0].startswith("prunefx quantize: error: ")
    return lines[0]


@needs_fashion_mnist
def test_calibration_images_of_another_shape_are_one_line_exit_2_and_nothing_written(tmp_path, capsys):
    model = _saved(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU()), (1, 3, 32, 32),
                   tmp_path / "rgb32.pt2")
    code = main(["quantize", model, "--calibrate", "fashion-mnist", "-o", str(tmp_path / "never")])
    line = _one_line_exit_2(code, capsys)
    assert "28x28" in line and "3x32x32" in line and not (tmp_path / "never").exists()


@needs_fashion_mnist
def test_a_model_with_no_quantizable_layer_is_one_line_exit_2_and_nothing_written(tmp_path, capsys):
    model = _saved(_PoolOnly(), (2, 1, 28, 28), tmp_path / "pool.pt2")
    code = main(["quantize", model, "--calibrate", "fashion-mnist", "--calibration-images", "16",
                 "-o", str(tmp_path / "never")])
    line = _one_line_exit_2(code, capsys)
    assert "no quantizable layer" in line and not (tmp_path / "never").exists()


def test_a_half_precision_model_is_refused_before_calibration_and_nothing_written(tmp_path, capsys, monkeypatch):
    """The INT8 lowerings read float32 quantizers (a float16 Program lowered for ONNX Runtime failed after the
    calibration, naming a quantizer): refused before the calibration images are read."""
    path = tmp_path / "half.pt2"
    capture(torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU()).half().eval(),
            torch.randn(1, 1, 28, 28).half()).save(path)
    read = []
    monkeypatch.setattr(quantize_command, "calibration_read", lambda *args: read.append(args))
    code = main(["quantize", str(path), "--calibrate", "fashion-mnist", "-o", str(tmp_path / "never")])
    line = _one_line_exit_2(code, capsys)
    assert "INT8 export takes float32 models" in line and "float16" in line
    assert not read and not (tmp_path / "never").exists()


def test_the_int8_export_refuses_a_half_precision_program_and_writes_nothing(tmp_path):
    half = capture(torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU()).half().eval(),
                   torch.randn(1, 1, 8, 8).half())
    quantized = quantize_int8(half, config={"calibration": [torch.randn(1, 1, 8, 8).half()]}).program
    with pytest.raises(OnnxExportError, match="holds float16 tensors"):
        export_quantized_onnx(quantized, tmp_path / "int8.onnx", activations="u8")
    assert not list(tmp_path.iterdir())


def test_int8_measured_slower_than_float_is_a_warning(caplog):
    """A ratio under 1 in the summary is easy to read past: where the speed-up's whole interval lies below 1x, a
    warning says so; an interval that reaches 1x (or none) says nothing."""
    slower = {"threads": 2, "speedup": 0.8, "interval": {"low": 0.75, "high": 0.85, "confidence": 0.95}}
    with caplog.at_level(logging.WARNING):
        quantize_command._warn_if_slower({**slower, "interval": {**slower["interval"], "high": 1.02}})
        quantize_command._warn_if_slower({**slower, "interval": None})
        assert not caplog.records
        quantize_command._warn_if_slower(slower)
    assert "model_ort.onnx ran slower than the float model" in caplog.text and "0.75-0.85x" in caplog.text
