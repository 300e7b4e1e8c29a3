"""Budgets measured on TensorRT backends (runtime/backends/). No TensorRT, trtexec or GPU here: the trtexec
pair runs against a stand-in for trtexec whose latency is a known function of the ONNX file it is given (read back
with `onnx`), and the CLI is checked to fail in one line, before loading a model, when a backend is missing."""

from __future__ import annotations

import gc
import importlib
import importlib.util
import math
import weakref
from pathlib import Path

import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from prunefx.cli import EXIT_USER_ERROR, main
from prunefx.graph import capture
from prunefx.graph.errors import PrunefxError
from prunefx.passes.prune_to_budget import prune_to_budget
from prunefx.passes.quantize_int8 import quantize_int8
from prunefx.runtime import LatencyStats, latency_pair
from prunefx.runtime.backends.base import BenchModel
from prunefx.runtime.backends.settings import Settings
from prunefx.runtime.errors import MeasurementError

trtexec_backend = importlib.import_module("prunefx.runtime.backends.trtexec")
trt_backend = importlib.import_module("prunefx.runtime.backends.trt")
pytestmark = pytest.mark.usefixtures("one_thread")
SPREAD = 0.2  # the stand-in's p90 is 1.2 x its median
MS_PER_WEIGHT = 1e-4


def _net(width: int = 16, batch: int = 2):
    """Three stride-1 convolutions on 16x16 images: MACs are proportional to the convolution weights' sizes."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, width, 3, padding=1),
                          nn.ReLU(), nn.Conv2d(width, 8, 3, padding=1)).eval()
    return capture(model, torch.randn(batch, 3, 16, 16), name=f"net{width}").eval()


def _conv_weights(model: onnx.ModelProto) -> int:
    """Elements of every Conv weight in the file, whether float or INT8 behind a DequantizeLinear."""
    sizes = {init.name: math.prod(init.dims) for init in model.graph.initializer}
    producers = {output: node for node in model.graph.node for output in node.output}
    total = 0
    for node in model.graph.node:
        if node.op_type == "Conv":
            weight = node.input[1]
            if weight in producers and producers[weight].op_type == "DequantizeLinear":
                weight = producers[weight].input[0]
            total += sizes[weight]
    return total


@pytest.fixture
def trtexec(monkeypatch):
    """A stand-in for trtexec: its median GPU time is MS_PER_WEIGHT per convolution weight in the file it built the
    engine from (so latency follows MACs); every timing is recorded with that file as trtexec would read it, and
    every build by the file's bytes (`trtexec.builds`)."""
    runs, built = TimedRuns(), {}

    def build(path, options, program, version, folder, *, timing_cache=None, **_):
        engine = trtexec_backend.BuiltEngine(folder / "model.engine", [program, f"--onnx={path}"])
        engine.path.write_bytes(b"")
        runs.engine_paths.append(engine.path)
        built[engine.path] = onnx.load(str(path))
        runs.builds.append(built[engine.path].SerializeToString())
        return engine

    def time(engine, options, program, version, **_):
        model = built[engine.path]
        ms = MS_PER_WEIGHT * _conv_weights(model)
        runs.append({"model": model, "options": options, "executable": program, "ms": ms})
        stats = LatencyStats(median_ms=ms, p90_ms=(1 + SPREAD) * ms, p99_ms=1.5 * ms, mean_ms=ms, min_ms=0.9 * ms,
                             runs=options.iterations, threads=None)
        return type("Result", (), {"latency": stats})()

    monkeypatch.setattr(trtexec_backend, "find_trtexec", lambda executable=None: executable or "trtexec")
    monkeypatch.setattr(trtexec_backend, "trtexec_version", lambda program: "10.3.0")
    monkeypatch.setattr(trtexec_backend, "build_with_trtexec", build)
    monkeypatch.setattr(trtexec_backend, "time_with_trtexec", time)
    return runs


class TimedRuns(list):
    builds: list[bytes]
    engine_paths: list[Path]

    def __init__(self):
        super().__init__()
        self.builds, self.engine_paths = [], []


def test_trtexec_pair_returns_medians_caches_and_confirms_longer(trtexec):
    dense, narrow = _net(16), _net(8)
    pair = latency_pair("trtexec", threads=1, runs=7, trtexec="/opt/trt/trtexec")
    dense_ms, narrow_ms, spread = pair(dense, narrow)
    assert [run["executable"] for run in trtexec] == ["/opt/trt/trtexec"] * 2
    assert dense_ms == pytest.approx(trtexec[0]["ms"]) and narrow_ms == pytest.approx(trtexec[1]["ms"])
    assert dense_ms > narrow_ms > 0 and spread == pytest.approx(SPREAD)
    for run in trtexec:  # cut to batch 1 (captured at 2), float32 at the precision asked for
        assert run["model"].graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1
        assert run["options"].iterations == 7 and run["options"].precision == "fp32"

    assert tuple(pair(dense, narrow.clone())) == (dense_ms, narrow_ms, spread)  # cached: trtexec does not run again
    assert len(trtexec) == 2

    confirmed = pair.confirm(dense, narrow)  # trtexec runs one model after the other: a point, no interval
    assert tuple(confirmed) == pytest.approx((dense_ms, narrow_ms, spread)) and confirmed.method == "point"
    assert pair.round_to == 8  # FP32/TF32 tensor cores, not ONNX Runtime's CPU multiple
    assert [run["options"].iterations for run in trtexec[2:]] == [28, 28]  # 4x the runs
    built = set(trtexec.engine_paths)
    assert len(built) == 2 and all(path.exists() for path in built)
    pair.close()  # its engines and files are removed now, not when it is collected
    assert not any(path.exists() for path in built)


def test_a_fake_quantized_program_is_timed_in_tensorrt_s8_form_its_other_layers_as_the_dense_models(trtexec):
    dense = _net(16)
    quantized = quantize_int8(dense.clone(), config={"calibration": [torch.randn(2, 3, 16, 16)],
                                                     "method": "max"}).program
    pair = latency_pair("trtexec", threads=1, runs=5)
    pair(dense, quantized)
    file, options = trtexec[1]["model"], trtexec[1]["options"]
    inits = {init.name: init for init in file.graph.initializer}
    quantizers = [node for node in file.graph.node if node.op_type == "QuantizeLinear"]
    # the Q/DQ layers are INT8 by the file itself; the others at the dense model's precision (plan.network_plan)
    assert quantizers and options.precision == "fp32" and trtexec[0]["options"].precision == "fp32"
    for node in quantizers:  # symmetric INT8 activations (TensorRT), not ONNX Runtime's UINT8
        zero = inits[node.input[2]]
        assert zero.data_type == onnx.TensorProto.INT8 and not numpy_helper.to_array(zero).any()
    assert _conv_weights(file) == _conv_weights(trtexec[0]["model"])  # every weight found, behind its DQ


def test_prune_to_budget_meets_a_budget_measured_by_trtexec(trtexec):
    dense = _net(32, batch=1)
    pair = latency_pair("trtexec", threads=1, runs=3)
    result = prune_to_budget(dense.clone(), config={"speedup": 1.5, "latency": pair, "round_to": 4})
    stats = result.stats
    dense_ms, ms, _ = pair.confirm(dense, result.program)  # the stand-in's truth, on the model returned
    assert stats["met"] and stats["confirmed"] and 1.5 <= dense_ms / ms <= 1.5 * 1.15
    assert stats["speedup"] == pytest.approx(dense_ms / ms)
    assert any(run["options"].iterations == 12 for run in trtexec)  # a candidate was confirmed, longer
    assert len(trtexec.builds) == len(set(trtexec.builds)) < len(trtexec)  # the dense engine was built once


def test_trt_pair_builds_one_engine_per_file_and_times_them_alternately(monkeypatch):
    """The trt pair with TensorRT stood in for: an engine per file (both at the budget's precision: the Q/DQ
    file's INT8 is its own), its inputs bound, both engines timed call by call; the confirmation reuses the
    engines with 4x the runs."""
    built, calls = [], []

    class Engine:
        def __init__(self, path, options, cache_dir):
            self.ms, self.options = MS_PER_WEIGHT * _conv_weights(onnx.load(str(path))), options
            built.append(self)

        def set_inputs(self, *inputs):
            self.inputs = inputs

        def time_once(self):
            calls.append(self)
            return self.ms

    monkeypatch.setattr(trt_backend, "require_tensorrt", lambda: None)
    monkeypatch.setattr(trt_backend.TensorRTBackend, "software_version", lambda self, settings: "10.3.0")
    monkeypatch.setattr(trt_backend, "require_cuda", lambda: None)
    monkeypatch.setattr(trt_backend, "build_engine", lambda path, options, cache_dir=None:
                        Engine(path, options, cache_dir))
    monkeypatch.setattr(torch.Tensor, "cuda", lambda self: self)
    dense = _net(16)
    quantized = quantize_int8(dense.clone(), config={"calibration": [torch.randn(2, 3, 16, 16)]}).program
    pair = latency_pair("trt", threads=1, runs=5, warmup=1, precision="fp16")
    dense_ms, quantized_ms, spread = pair(dense, quantized)
    assert [engine.options.precision for engine in built] == ["fp16", "fp16"]
    assert dense_ms == pytest.approx(built[0].ms) and quantized_ms == pytest.approx(built[1].ms) and spread == 0
    # 1 warm-up, then 5 runs, each of the two first by turns
    assert calls == built + built + built[::-1] + built + built[::-1] + built
    assert tuple(built[0].inputs[0].shape) == (1, 3, 16, 16)
    pair.confirm(dense, quantized)
    assert len(built) == 2 and len(calls) == 12 + 2 * (2 + 30)  # the same engines: 2 warm-ups, 4x the runs but 3 blocks at least


def test_a_sparse_pair_builds_and_times_every_engine_with_sparse_kernels(trtexec, monkeypatch):
    """`sparse` is among the TensorRT backends' options, and bench and profile passed it on; a budget's pair built
    its engines dense whatever it was given."""
    pair = latency_pair("trtexec", threads=1, runs=3, sparse=True)
    pair(_net(16), _net(8))
    assert len(trtexec) == 2 and all(run["options"].sparse for run in trtexec)
    options = []
    monkeypatch.setattr(trt_backend, "build_engine", lambda path, given, cache_dir=None: options.append(given)
                        or type("Engine", (), {"set_inputs": lambda self, *x: None, "time_once": lambda self: 1.0})())
    monkeypatch.setattr(trt_backend, "dynamic_input_shapes", lambda path, inputs: {})
    trt_backend._Engines("fp16", None, sparse=True).timed(("model.onnx", (), "sha"))
    assert [given.sparse for given in options] == [True]
    torch_trt = importlib.import_module("prunefx.runtime.backends.torch_trt")
    compiled = []
    monkeypatch.setattr(torch_trt, "compile_torch_tensorrt", lambda program, precision, sparse=False:
                        compiled.append(sparse))
    torch_trt._Compiled("fp16", 1, sparse=True).get(_net(8))
    assert compiled == [True]
    with pytest.raises(MeasurementError, match="no 2:4 sparse kernels to measure with: sparse applies to trt, torch-trt, trtexec"):
        latency_pair("ort", threads=1, runs=3, sparse=True)


@pytest.mark.parametrize(("backend", "precision", "message"), [
    ("ort", "fp16", "applies to the GPU backends"),
    ("cuda", "fp32", "measures at fp16 or bf16"),
    ("trtexec", "int8", "INT8 comes from the model's own quantizers"),
    ("onnxruntime", "fp32", "unknown budget backend"),
])
def test_bad_choices_are_refused_when_the_pair_is_made(backend, precision, message):
    with pytest.raises(PrunefxError, match=message):
        latency_pair(backend, threads=1, runs=3, precision=precision)


# --- the command line -----------------------------------------------------------------------------

def _one_line_error(capsys, *argv) -> str:
    code = main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    assert code == EXIT_USER_ERROR, captured.err
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"prunefx {argv[0]}: error: "), captured.err
    assert "Traceback" not in captured.err and captured.out == ""
    return lines[0]


tensorrt_usable = importlib.util.find_spec("tensorrt") is not None and torch.cuda.is_available()


@pytest.mark.skipif(tensorrt_usable, reason="TensorRT and a GPU are here: the search would run")
def test_prune_on_trt_without_tensorrt_fails_in_one_line_before_loading(capsys, tmp_path, monkeypatch):
    loaded = []
    monkeypatch.setattr("prunefx.cli.commands.prune.model_and_program", lambda *args, **kwargs: loaded.append(args))
    line = _one_line_error(capsys, "prune", "prunefx:resnet20", "--speedup", 2, "--backend", "trt",
                           "-o", tmp_path / "out")
    assert "TensorRT" in line and not loaded and not (tmp_path / "out").exists()


def test_prune_on_trtexec_that_does_not_exist_fails_in_one_line(capsys, tmp_path):
    line = _one_line_error(capsys, "prune", "prunefx:resnet20", "--speedup", 2, "--backend", "trtexec",
                           "--trtexec", "/nonexistent/trtexec", "-o", tmp_path / "out")
    assert "trtexec not found at /nonexistent/trtexec" in line and not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", [
    ["prune", "prunefx:resnet20", "--macs", 0.5],
    ["depth", "prunefx:resnet20", "--blocks", 2, "--no-measure"],  # merges timed: they read --backend
])
def test_a_backend_without_a_budget_fails_in_one_line(capsys, tmp_path, command):
    line = _one_line_error(capsys, *command, "--backend", "trt", "-o", tmp_path / "out")
    assert "give a budget" in line and not (tmp_path / "out").exists()


@pytest.mark.parametrize("command, flags, said", [
    (["prune", "prunefx:resnet20", "--macs", 0.5], ["--tolerance", 0.05, "--no-confirm"],
     "--tolerance, --confirm: only a budget's search reads these"),
    (["prune", "prunefx:resnet20", "--macs", 0.5], ["--threads", 1, "--runs", 7], "--threads, --runs: only a budget's measurements"),
    (["depth", "prunefx:resnet20", "--blocks", 2], ["--tolerance", 0.05], "--tolerance: only a budget's search reads these"),
    (["depth", "prunefx:resnet20", "--blocks", 2, "--no-measure"], ["--runs", 7], "--runs: only timed merges read these"),
    # at their defaults too: asked for, and not read (cli.md: "refused ... rather than ignored")
    (["prune", "prunefx:resnet20", "--macs", 0.5], ["--tolerance", 0.15, "--confirm"],
     "--tolerance, --confirm: only a budget's search reads these"),
    (["prune", "prunefx:resnet20", "--macs", 0.5], ["--threads=2"], "--threads: only a budget's measurements"),
])
def test_measurement_flags_with_nothing_to_measure_fail_in_one_line(capsys, tmp_path, command, flags, said):
    """Flags a run would not read (no budget; no latency table; no merge timed) are refused, not ignored."""
    line = _one_line_error(capsys, *command, *flags, "-o", tmp_path / "out")
    assert said in line and not (tmp_path / "out").exists()


def test_compress_checks_the_backend_before_loading_data(capsys, tmp_path):
    line = _one_line_error(capsys, "compress", "prunefx:resnet20", "--speedup", 2, "--data", "no-such-data",
                           "--backend", "trtexec", "--trtexec", "/nonexistent/trtexec", "-o", tmp_path / "out")
    assert "trtexec not found" in line  # not the unknown data: the backend is checked first


def test_the_budget_line_names_the_runtime_it_was_measured_on():
    from prunefx.reports.budget_text import search_lines

    budget = {"trace": [], "budget": "2x", "speedup": 2.1, "ms": 1.0, "dense_ms": 2.1}
    assert "measured on ONNX Runtime (" in search_lines(budget)[-1]
    assert "measured on trtexec fp16 (" in search_lines({**budget, "backend": "trtexec", "precision": "fp16"})[-1]


def test_the_pair_measures_at_the_batch_asked_for(trtexec):
    pair = latency_pair("trtexec", threads=1, runs=3, batch=2)
    pair(_net(16, batch=4), _net(8, batch=4))
    assert [run["model"].graph.input[0].type.tensor_type.shape.dim[0].dim_value for run in trtexec] == [2, 2]
    with pytest.raises(PrunefxError, match="a batch size is at least 1"):
        latency_pair("trtexec", threads=1, runs=3, batch=0)


def test_a_trt_search_keeps_two_engines_loaded(monkeypatch):
    """The dense model's engine and the candidate's: each other engine is dropped once a newer one is loaded, so a
    search over many candidates holds two engines' GPU memory, not all of them."""
    loaded = []

    class Engine:
        def __init__(self, path):
            self.ms = MS_PER_WEIGHT * _conv_weights(onnx.load(str(path)))
            loaded.append(weakref.ref(self))

        def set_inputs(self, *inputs):
            pass

        def time_once(self):
            return self.ms

    monkeypatch.setattr(trt_backend, "require_tensorrt", lambda: None)
    monkeypatch.setattr(trt_backend.TensorRTBackend, "software_version", lambda self, settings: "10.3.0")
    monkeypatch.setattr(trt_backend, "require_cuda", lambda: None)
    monkeypatch.setattr(trt_backend, "build_engine", lambda path, options, cache_dir=None: Engine(path))
    monkeypatch.setattr(torch.Tensor, "cuda", lambda self: self)
    dense = _net(16)
    pair = latency_pair("trt", threads=1, runs=2, warmup=0, precision="fp16")
    for width in (8, 4, 2):
        pair(dense, _net(width))
    gc.collect()
    assert len(loaded) == 4  # the dense model's engine built once, every candidate's once
    assert [ref() is not None for ref in loaded] == [True, False, False, True]


def test_torch_tensorrt_refuses_to_bench_an_int8_program_as_its_budgets_do(monkeypatch):
    """Torch-TensorRT has no converter for fake quantizers: bench compiled them and timed float operators."""
    torch_trt = importlib.import_module("prunefx.runtime.backends.torch_trt")
    compiled = []
    monkeypatch.setattr(torch_trt, "compile_torch_tensorrt", lambda program, precision, sparse=False:
                        compiled.append(program))
    dense = _net(16)
    quantized = quantize_int8(dense.clone(), config={"calibration": [torch.randn(2, 3, 16, 16)]}).program
    settings = Settings(precision="fp16")
    with pytest.raises(MeasurementError, match="Torch-TensorRT does not time 'net16' as INT8"):
        torch_trt.BACKEND.runner(BenchModel("int8.pt2", quantized, None), settings)
    assert compiled == []
