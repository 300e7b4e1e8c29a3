"""The cuda latency backend (runtime/backends/cuda.py, runtime/cuda/graph.py, runtime/cuda/node_profile.py).

Without a GPU, the backend runs against a fake device: it keeps the model on the CPU, counts captures and
compiles, and its timer answers a known time per model (MS_PER_WEIGHT per convolution weight of the module
that ran), recording which model each timed call ran, so selection, alternation, caching and refusals are
checked against that stand-in's truth. The `gpu` tests run the real thing on CUDA and skip here.
"""

from __future__ import annotations

import gc
import importlib
import json
import math
import time
import warnings

import pytest
import torch
from torch import nn

from prunefx.cli import EXIT_USER_ERROR, main
from prunefx.graph import Program, capture
from prunefx.graph.channels.timed_layers import timed_layers
from prunefx.graph.errors import PrunefxError
from prunefx.runtime import latency_pair
from prunefx.runtime.backends import Settings
from prunefx.runtime.backends.cuda import CudaBackend
from prunefx.runtime.cuda.graph import CudaDevice, GpuModel, capture_batch_limit
from prunefx.runtime.cuda.layer_timer import CudaLayerTimer
from prunefx.runtime.errors import BackendUnavailableError, MeasurementError
from prunefx.runtime.measure.gpu_latency import SAMPLE_MS, measure_gpu_latency

cuda_module = importlib.import_module("prunefx.runtime.backends.cuda")
cuda_graph = importlib.import_module("prunefx.runtime.cuda.graph")
cuda_node_profile = importlib.import_module("prunefx.runtime.cuda.node_profile")
pytestmark = pytest.mark.usefixtures("one_thread")
MS_PER_WEIGHT = 1e-3


def _net(width: int = 16, batch: int = 2):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, 8, 3, padding=1)).eval()
    return capture(model, torch.randn(batch, 3, 8, 8), name=f"net{width}").eval()


def _weights(module: nn.Module) -> int:
    return sum(p.numel() for name, p in module.named_parameters() if p.dim() == 4)


class FakeDevice(CudaDevice):
    """The CPU standing in for a GPU: the module stays float32 on the CPU; its timer answers MS_PER_WEIGHT per
    convolution weight of the model that ran (times the iterations a captured replay holds), and records the
    model's weight count per timed sample."""

    warm_seconds = 0.0

    def __init__(self, available: bool = True):
        self.is_available, self.captures, self.compiles, self.dtypes, self.timed = available, 0, 0, [], []
        self.last, self.released, self.iterations = None, 0, []

    def available(self) -> bool:
        return self.is_available

    def describe(self) -> dict:
        return {"gpu": "fake GPU", "torch": torch.__version__, "cuda": None, "cudnn_benchmark": True}

    def place(self, module, inputs, dtype):
        self.dtypes.append(dtype)
        device, weights = self, _weights(module)
        module.register_forward_pre_hook(lambda *_: setattr(device, "last", weights))
        return module, tuple(inputs)

    def compile(self, module):
        self.compiles += 1
        return module

    def capture(self, run, iterations=1):
        self.captures += 1
        self.iterations.append(iterations)

        def replay():
            for _ in range(iterations):
                run()
        replay.iterations = iterations
        return replay

    def time(self, run, calls=1) -> float:
        run()
        self.timed.append(self.last)
        return MS_PER_WEIGHT * self.last * getattr(run, "iterations", 1)

    def release(self):
        self.released += 1

    def peak_memory(self):
        return 1234


@pytest.fixture
def fake(monkeypatch):
    device = FakeDevice()
    monkeypatch.setattr(cuda_module.BACKEND, "device", device)
    return device


def test_the_pair_times_dense_and_candidate_alternately_with_the_fake_timer(fake):
    dense, narrow = _net(16), _net(8)
    pair = latency_pair("cuda", threads=1, runs=5, warmup=2)
    dense_ms, narrow_ms, spread = pair(dense, narrow)
    assert dense_ms == pytest.approx(MS_PER_WEIGHT * _weights(dense.module))
    assert narrow_ms == pytest.approx(MS_PER_WEIGHT * _weights(narrow.module)) and spread == 0
    # each model timed twice as it is prepared (a replay's length, then a sample's), then 2 warm-ups of dense,
    # candidate and 5 runs that alternate which of the two goes first
    prepared = [_weights(dense.module)] * 2 + [_weights(narrow.module)] * 2
    pair_first, pair_second = [_weights(dense.module), _weights(narrow.module)], [_weights(narrow.module),
                                                                                  _weights(dense.module)]
    runs = (pair_first + pair_second) * 2 + pair_first
    assert fake.timed == prepared + pair_first * 2 + runs
    assert fake.dtypes == [torch.float16] * 2 and fake.captures == 2  # fp16 by default, one graph each
    assert pair.round_to == 8


def test_models_are_prepared_once_per_program_fingerprint_and_pairs_are_cached(fake):
    dense, narrow, narrower = _net(16), _net(8), _net(4)
    pair = latency_pair("cuda", threads=1, runs=3, warmup=0, compile=True, precision="bf16")
    first = pair(dense, narrow)
    pair(dense.clone(), narrower)  # the dense model again (a copy): not prepared again
    assert fake.captures == 3 and fake.compiles == 3 and fake.dtypes == [torch.bfloat16] * 3
    assert fake.released == 1  # the first candidate left the GPU when the second came
    timed = len(fake.timed)
    assert pair(dense, narrow.clone()) == first and len(fake.timed) == timed  # answered from the cache
    assert fake.captures == 3  # ... without preparing the freed candidate again
    confirmed = pair.confirm(dense, narrow)  # 4x the runs, at least 3 blocks: the freed candidate is prepared again
    assert confirmed.speedup == pytest.approx(_weights(dense.module) / _weights(narrow.module))
    assert len(fake.timed) == timed + 2 + 2 * 30 and fake.captures == 4
    assert confirmed.method != "point"  # an interval over its blocks, even at 3 runs a search measurement


def test_an_int8_program_is_refused_in_one_line_before_it_reaches_the_gpu(fake, tmp_path, capsys):
    """At fp16 its quantizers would fail on half scales; at any precision they would be timed as float ops."""
    from prunefx.passes.quantize_int8 import quantize_int8
    dense = _net(16)
    quantized = quantize_int8(dense.clone(), config={"calibration": [torch.randn(2, 3, 8, 8)]}).program
    with pytest.raises(PrunefxError, match="cuda backend does not time 'net16' as INT8.*--backend trt"):
        latency_pair("cuda", threads=1, runs=3, warmup=0)(dense, quantized)
    quantized.save(tmp_path / "int8.pt2")
    assert main(["bench", str(tmp_path / "int8.pt2"), "--backend", "cuda"]) == EXIT_USER_ERROR
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "as INT8" in line
    assert fake.dtypes == [torch.float16]  # the dense model alone was placed on the device


def test_time_program_times_one_small_program_at_the_batch(fake):
    stats = cuda_module.BACKEND.time_program(_net(8, batch=4), Settings(runs=3, warmup=1, batch=2))
    assert stats["runs"] == 3 and stats["median_ms"] == pytest.approx(MS_PER_WEIGHT * _weights(_net(8).module))
    assert fake.captures == 1 and fake.timed == [_weights(_net(8).module)] * (2 + 4)


def test_the_batch_is_cut_from_the_captured_one_and_a_larger_one_is_refused(fake):
    pair = latency_pair("cuda", threads=1, runs=1, warmup=0, batch=2)
    dense = _net(16, batch=4)
    pair(dense, _net(8, batch=4))
    model, _ = next(iter(_prepared(pair).values()))
    assert model.inputs[0].shape[0] == 2
    with pytest.raises(PrunefxError, match="cannot rebatch"):
        latency_pair("cuda", threads=1, runs=1, warmup=0, batch=8)(dense, _net(8, batch=4))


def _prepared(pair):
    """The PreparedModels behind a cuda pair's search measurement (cached_pair's `sources`)."""
    for cell in pair.search.__closure__:
        if isinstance(cell.cell_contents, cuda_module.PreparedModels):
            return cell.cell_contents.models.entries
    raise AssertionError("no PreparedModels in the pair")


def test_no_graph_is_captured_at_batch_64_and_the_reason_is_stated(fake):
    limit = capture_batch_limit()
    program = _net(4, batch=limit)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pair = latency_pair("cuda", threads=1, runs=1, warmup=0, batch=limit)
        pair(program, _net(2, batch=limit))
    assert fake.captures == 0 and pair.notes and "timed eagerly" in pair.notes[0]
    assert any("timed eagerly" in str(w.message) for w in caught)
    model, _ = next(iter(_prepared(pair).values()))
    # many eager calls per sample: enough that a sample lasts SAMPLE_MS
    assert model.mode == "eager" and model.calls == math.ceil(SAMPLE_MS / (MS_PER_WEIGHT * _weights(model.module)))
    small = GpuModel(_net(4, batch=2), precision="fp16", device=fake)
    assert small.mode == "graph" and small.reason == ""


def test_a_profile_at_batch_64_captures_no_node_and_says_so(fake):
    limit = capture_batch_limit()
    profile = cuda_node_profile.cuda_profile(GpuModel(_net(4, batch=limit), precision="fp16", device=fake),
                                             warmup=1, runs=1)
    assert profile.rows and fake.captures == 0 and "no CUDA graph" in profile.notes[0]


def test_the_capture_limit_can_be_moved_for_a_probe(monkeypatch):
    monkeypatch.setenv("PRUNEFX_CUDA_CAPTURE_BATCH_LIMIT", "128")
    assert capture_batch_limit() == 128
    monkeypatch.setenv("PRUNEFX_CUDA_CAPTURE_BATCH_LIMIT", "many")
    assert capture_batch_limit() == 64


def test_a_short_model_is_captured_again_with_enough_iterations_to_hide_its_launch(fake, monkeypatch):
    """A model whose stand-in time is below GRAPH_MIN_MS: one graph holds enough iterations to outlast it, a
    sample enough replays to last SAMPLE_MS, and time_once answers the time of one model call."""
    program = _net(1, batch=2)
    one_call = MS_PER_WEIGHT * _weights(program.module)
    minimum = 3.3 * one_call
    monkeypatch.setattr(cuda_graph, "GRAPH_MIN_MS", minimum)
    model = GpuModel(program, precision="fp16", device=fake)
    assert model.iterations == 4 and fake.iterations == [1, 4]  # the fewest whole iterations past the minimum
    assert model.calls == math.ceil(SAMPLE_MS / (model.iterations * one_call))
    assert model.time_once() == pytest.approx(one_call)
    assert model.timing() == {"mode": "graph", "iterations_per_replay": model.iterations,
                              "replays_per_sample": model.calls}


def test_a_graphs_first_replay_does_not_decide_its_iterations(fake, monkeypatch):
    """A graph's first replay uploads it (far slower than the model's work): the iterations and the replays per
    sample come from later replays, as for a device without that cost."""
    program = _net(1, batch=2)
    one_call = MS_PER_WEIGHT * _weights(program.module)
    monkeypatch.setattr(cuda_graph, "GRAPH_MIN_MS", 3.3 * one_call)
    capture, time = fake.capture, fake.time

    def capture_with_upload(run, iterations=1):
        replay = capture(run, iterations)

        def counted():
            counted.replays += 1
            replay()
        counted.iterations, counted.replays = iterations, 0
        return counted

    def time_with_upload(run, calls=1):
        upload = 100.0 if getattr(run, "replays", 1) == 0 else 0.0  # a graph never replayed yet: it uploads first
        return time(run, calls) + upload

    monkeypatch.setattr(fake, "capture", capture_with_upload)
    monkeypatch.setattr(fake, "time", time_with_upload)
    model = GpuModel(program, precision="fp16", device=fake)
    assert model.iterations == 4 and fake.iterations == [1, 4]
    assert model.calls == math.ceil(SAMPLE_MS / (model.iterations * one_call))


def test_a_graph_sized_at_idle_clocks_is_captured_again_once_the_warm_gpu_shows_its_launch(fake, monkeypatch):
    """Sized before the warm-up, at idle clocks (here ten times slower), a graph of one call outlasts the minimum;
    at busy clocks its replays last no longer than their launch, which every sample would then time. The
    warm-up's samples show it, and the graph is captured again until a replay outlasts the minimum."""
    program = _net(1, batch=2)
    one_call = MS_PER_WEIGHT * _weights(program.module)  # at busy clocks
    launch = 5 * one_call  # a replay lasts at least its launch
    monkeypatch.setattr(cuda_graph, "GRAPH_MIN_MS", 10 * one_call)
    idle, busy_time = iter([10.0] * 3), fake.time  # the first three timings at a tenth of the clocks

    def time_with_clocks_and_launch(run, calls=1):
        return max(busy_time(run, calls) * next(idle, 1.0), launch)

    monkeypatch.setattr(fake, "time", time_with_clocks_and_launch)
    model = GpuModel(program, precision="fp16", device=fake)
    assert model.iterations == 1  # sized at idle clocks
    median = measure_gpu_latency(model.time_once, warmup=5, runs=5).median_ms
    assert model.iterations * one_call >= cuda_graph.GRAPH_MIN_MS * (1 - 1e-9)
    assert median == pytest.approx(one_call)  # not the launch's 5x
    assert model.calls == math.ceil(SAMPLE_MS / (model.iterations * one_call))


def test_a_budget_search_keeps_two_models_on_the_gpu_and_reports_its_memory(fake):
    dense = _net(32)
    pair = latency_pair("cuda", threads=1, runs=2, warmup=0)
    for width in (24, 16, 8, 4):
        pair(dense, _net(width))
        assert len(_prepared(pair)) <= 2
    facts = pair.facts()
    assert facts["models_prepared"] == 5 and facts["models_freed"] == 3 and fake.released == 3
    assert facts["peak_gpu_memory_bytes"] == 1234 and facts["cudnn_benchmark"] is True


@pytest.mark.parametrize(("kwargs", "error", "message"), [
    ({}, BackendUnavailableError, "needs an NVIDIA GPU"),
    ({"precision": "fp32"}, PrunefxError, "measures at fp16 or bf16"),
    ({"batch": 0}, PrunefxError, "batch size is at least 1"),
])
def test_refusals_before_any_model_is_prepared(monkeypatch, kwargs, error, message):
    device = FakeDevice(available=False)
    monkeypatch.setattr(cuda_module.BACKEND, "device", device)
    with pytest.raises(error, match=message):
        latency_pair("cuda", threads=1, runs=1, **kwargs)
    assert device.dtypes == []


def test_prune_on_cuda_without_a_gpu_fails_in_one_line_before_loading(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(cuda_module.BACKEND, "device", FakeDevice(available=False))
    loaded = []
    monkeypatch.setattr("prunefx.cli.commands.prune.model_and_program", lambda *a, **k: loaded.append(a))
    code = main(["prune", "prunefx:resnet20", "--speedup", "1.3", "--backend", "cuda", "--batch", "8",
                 "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == EXIT_USER_ERROR and len(err) == 1 and "needs an NVIDIA GPU" in err[0]
    assert not loaded and not (tmp_path / "out").exists()


def test_prune_meets_a_speedup_on_cuda_at_a_batch_and_reports_where(capsys, tmp_path, fake):
    dense = _net(32, batch=4)
    main(["prune", str(dense.save(tmp_path / "dense.pt2")), "--speedup", "1.5", "--backend", "cuda", "--batch", "2",
          "-o", str(tmp_path / "out")])
    report = json.loads((tmp_path / "out" / "report.json").read_text())["budget"]
    assert (report["backend"], report["precision"], report["batch"], report["met"]) == ("cuda", "fp16", 2, True)
    chosen = Program.load(tmp_path / "out" / "model.pt2")  # the stand-in's truth on the delivered model
    assert _weights(dense.module) / _weights(chosen.module) >= 1.5 and report["round_to"] == 8
    # how it was measured: autotuned, warmed by time, the GPU memory the search held at its peak
    measurement = report["measurement"]
    assert measurement["cudnn_benchmark"] is True and measurement["peak_gpu_memory_bytes"] == 1234
    assert measurement["models_prepared"] - measurement["models_freed"] <= 2
    assert "measured on PyTorch on CUDA fp16 at batch 2" in capsys.readouterr().out
    assert set(fake.timed) >= {_weights(dense.module)} and fake.dtypes[0] == torch.float16


def test_compress_times_its_stages_and_its_result_on_the_budget_backend(capsys, tmp_path, fake, schema_errors,
                                                                      monkeypatch):
    """compress --backend cuda, no budget: the report's latency and each stage's are the GPU's (the stand-in's truth:
    MS_PER_WEIGHT per convolution weight of the model timed), at the batch and precision asked, not ONNX Runtime's."""
    from prunefx.models.small import resnet20

    recipe = tmp_path / "prune.yaml"
    recipe.write_text(json.dumps({"passes": [{"remove_channels": {"macs": 0.5}}]}))  # YAML reads JSON
    held_at_the_final_timing, bench = [], CudaBackend.bench

    def counted_bench(self, models, settings):  # the models the stage rows timed are off the GPU by then
        held_at_the_final_timing.append(sum(isinstance(thing, GpuModel) for thing in gc.get_objects()))
        return bench(self, models, settings)

    monkeypatch.setattr(CudaBackend, "bench", counted_bench)
    code = main(["compress", "prunefx:resnet20", "--recipe", str(recipe), "--data", "fashion-mnist", "--batch-size", "8",
                 "--eval-batches", "1", "--runs", "3", "--backend", "cuda", "--batch", "2", "-o", str(tmp_path / "out")])
    out, err = capsys.readouterr()
    assert code == 0, err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    truth = _weights(resnet20()) / _weights(Program.load(tmp_path / "out" / "model.pt2").module)
    latency = report["latency"]
    assert (latency["backend"], latency["precision"], latency["batch_size"], latency["threads"]) == ("cuda", "fp16", 2, None)
    assert latency["measurement"]["gpu"] == "fake GPU" and latency["measurement"]["cuda_graph"] is True
    assert not schema_errors(report)  # the published shape, with no thread count on a GPU
    assert report["speedup"] == pytest.approx(truth) and truth > 1.5
    (stage,) = report["stages"]
    assert stage["latency"]["speedup"] == pytest.approx(truth)
    assert set(fake.dtypes) == {torch.float16} and held_at_the_final_timing == [0]
    assert "latency (PyTorch on CUDA fp16, batch 2, median)" in out
    assert "Test score, MACs per image and latency (PyTorch on CUDA fp16, batch 2," in (
        tmp_path / "out" / "report.md").read_text()


def test_bench_and_profile_on_cuda_with_the_fake_device(capsys, tmp_path, fake):
    pt2 = _net(16, batch=4).save(tmp_path / "a.pt2")
    other = _net(8, batch=4).save(tmp_path / "b.pt2")
    assert main(["bench", str(pt2), "--vs", str(other), "--backend", "cuda", "--batch", "2", "--runs", "4",
                 "--warmup", "1", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["backend"] == "cuda" and report["precision"] == "fp16" and report["batch"] == 2
    assert report["cuda_graph"] is True and report["gpu"] == "fake GPU"
    assert report["speedup"] == pytest.approx(_weights(_net(16).module) / _weights(_net(8).module))
    assert main(["profile", str(pt2), "--backend", "cuda", "--runs", "3", "--warmup", "0",
                 "-o", str(tmp_path / "profile.json")]) == 0
    profile = json.loads((tmp_path / "profile.json").read_text())
    convolutions = [row for row in profile["layers"] if row["layer_type"] == "conv2d"]
    assert profile["source"] == "cuda" and len(convolutions) == 2  # one row per convolution node, timed
    # what was profiled, and how, recorded with the rows
    assert (profile["model"], profile["backend"], profile["precision"]) == (str(pt2), "cuda", "fp16")
    assert len(profile["inputs"]) == 1 and profile["inputs"][0].startswith("4x")
    # the fake timer answers the whole model's time for each node it times: every row has it
    assert all(row["median_ms"] == pytest.approx(MS_PER_WEIGHT * _weights(_net(16).module)) for row in convolutions)
    assert sum(row["share"] for row in profile["layers"]) == pytest.approx(1)


class AutotuneWitness(FakeDevice):
    """The fake device, noting cuDNN's autotuning setting at every call of a model it placed."""

    def __init__(self):
        super().__init__()
        self.autotuning: list[bool] = []

    def place(self, module, inputs, dtype):
        module.register_forward_pre_hook(lambda *_: self.autotuning.append(torch.backends.cudnn.benchmark))
        return super().place(module, inputs, dtype)


@pytest.mark.parametrize("capture", [True, False])
def test_every_model_call_autotunes_and_the_callers_setting_is_left_as_found(monkeypatch, capture):
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)  # torch's default
    witness = AutotuneWitness()
    model = GpuModel(_net(16), precision="fp16", device=witness, capture=capture)
    model.time_once()
    layer_ms = CudaLayerTimer(witness, "fp16")(timed_layers(_net(16).module)[0])
    assert layer_ms > 0 and len(witness.autotuning) > 2 * 3  # each model's warm-up calls, capture and samples
    assert all(witness.autotuning) and torch.backends.cudnn.benchmark is False


def test_a_profile_autotunes_every_node_call_and_leaves_the_setting_as_found(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    seen: list[bool] = []
    recorded = cuda_node_profile.node_calls

    def witnessed(model):
        def noted(call):
            return lambda: (seen.append(torch.backends.cudnn.benchmark), call())[1]
        return {name: noted(call) for name, call in recorded(model).items()}

    monkeypatch.setattr(cuda_node_profile, "node_calls", witnessed)
    device = FakeDevice()
    profile = cuda_node_profile.cuda_profile(GpuModel(_net(16), precision="fp16", device=device, capture=False),
                                             warmup=1, runs=2)
    assert profile.rows and seen and all(seen) and torch.backends.cudnn.benchmark is False


class _Classifier(nn.Module):
    """A permute (a view), a flat reshape of it (a copy), a view of that, a head."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn, self.fc = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Linear(4 * 8 * 8, 5)

    def forward(self, x):
        y = torch.relu(self.bn(self.conv(x)))
        flat = y.permute(0, 2, 3, 1).reshape(y.shape[0], -1)
        return self.fc(flat.view(y.shape[0], -1))


def test_a_profile_times_the_nodes_that_run_kernels_and_not_views_or_items():
    """Captured alone, a node that picks an item of a tuple or returns a view of its input is an empty CUDA graph
    (torch warns) and a row of microseconds for nothing; a reshape that had to copy runs a kernel and keeps its row.
    The oracle: torch's own semantics of each operator (a permute is a view, a flat reshape of it copies)."""
    torch.manual_seed(0)
    program = capture(_Classifier().eval(), torch.randn(2, 3, 8, 8), name="classifier").eval()
    timed = cuda_node_profile.node_calls(GpuModel(program, precision="fp32", device=FakeDevice(), capture=False))
    operators = {node.name: str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    assert {"aten.permute.default", "aten.view.default"} < set(operators.values())
    assert {operators[name] for name in timed} == {"aten.conv2d.default", "aten.batch_norm.default",
                                                  "aten.relu.default", "aten.reshape.default", "aten.linear.default"}


def test_bench_refuses_a_flag_the_backend_does_not_read(capsys, tmp_path):
    code = main(["bench", "prunefx:resnet20", "--backend", "ort", "--compile"])
    err = capsys.readouterr().err
    assert code == EXIT_USER_ERROR and "--compile applies to --backend cuda" in err


# --- on a GPU -----------------------------------------------------------------------------------

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU with CUDA")


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_a_cuda_graph_replay_computes_the_model_and_times_it(precision):
    program = _net(32, batch=8)
    model = GpuModel(program, precision=precision, device=CudaDevice())
    assert model.mode == "graph" and model.time_once() > 0
    expected = program(*program.example_inputs)
    output = model._call()  # the placed module (half precision, channels_last) computes the float32 model
    assert output.dtype != torch.float32 and torch.allclose(output.float().cpu(), expected, atol=5e-2, rtol=5e-2)


@pytest.mark.gpu
@requires_cuda
def test_every_capture_on_a_gpu_warms_and_captures_on_one_side_stream(monkeypatch):
    """cuBLAS keeps a workspace per stream it ran on, which empty_cache does not give back: a search's hundreds of
    captures took up to every stream of torch's pool."""
    made = []
    real_stream = torch.cuda.Stream

    def stream(*args, **kwargs):  # current_stream() wraps an existing stream by its stream_id: not a new one
        if "stream_id" not in kwargs:
            made.append(1)
        return real_stream(*args, **kwargs)

    monkeypatch.setattr(torch.cuda, "Stream", stream)
    for width in (8, 16, 32):
        assert GpuModel(_net(width, batch=8), precision="fp16", device=CudaDevice()).mode == "graph"
    assert len(made) <= 1  # none where an earlier test of this process made the GPU's side stream


class SyncsOnTheHost(nn.Module):
    """Reads a value back to the host on every call: a CUDA graph cannot capture it."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 1)

    def forward(self, x):
        y = self.conv(x)
        return y * float(y.mean().item() > -1e9)


@pytest.mark.gpu
@requires_cuda
def test_a_model_that_syncs_on_the_host_is_timed_eagerly_and_leaves_the_stream_and_allocator_usable():
    stream = torch.cuda.current_stream()
    model = GpuModel.of_module(SyncsOnTheHost().eval(), (torch.randn(1, 3, 8, 8),), precision="fp16",
                               device=CudaDevice())
    assert model.capture_failed and model.mode == "eager" and model.time_once() > 0
    assert torch.cuda.current_stream() == stream and torch.cuda.get_sync_debug_mode() == 0
    torch.cuda.empty_cache()  # an allocator left mid-capture asserts here
    assert GpuModel(_net(16, batch=2), precision="fp16", device=CudaDevice()).mode == "graph"


@pytest.mark.gpu
@requires_cuda
def test_the_pair_on_a_gpu_measures_the_wider_model_slower():
    pair = CudaBackend().latency_pair(Settings(runs=50, warmup=10, precision="fp16", batch=8))
    dense_ms, narrow_ms, _ = pair(_net(512, batch=8), _net(8, batch=8))
    assert dense_ms > narrow_ms > 0


@pytest.mark.gpu
@requires_cuda
def test_a_tiny_layer_is_timed_without_its_launch():
    """A 1x1 convolution on a small input is a few microseconds of GPU work, less than a graph launch: its
    sample holds many iterations per replay, and the time agrees with Triton's own CUDA-graph timer."""
    triton_testing = pytest.importorskip("triton.testing")
    module = nn.Conv2d(64, 64, 1).eval()
    found = torch.backends.cudnn.benchmark
    model = GpuModel.of_module(module, (torch.randn(1, 64, 14, 14),), precision="fp16", device=CudaDevice())
    assert model.mode == "graph" and model.iterations > 1 and torch.backends.cudnn.benchmark is found
    ours = sorted(model.time_once() for _ in range(50))[25]
    theirs = triton_testing.do_bench_cudagraph(model._call, rep=100)
    assert 0.5 < ours / theirs < 2.0
    # at the warm GPU's clocks a replay still outlasts the minimum (captured again if it had been sized idle)
    assert model.iterations == cuda_graph.MAX_ITERATIONS or model.iterations * ours >= 0.8 * cuda_graph.GRAPH_MIN_MS


@pytest.mark.gpu
@requires_cuda
def test_a_large_batch_is_sampled_eagerly_back_to_back_and_agrees_with_triton():
    triton_testing = pytest.importorskip("triton.testing")
    program = _net(64, batch=capture_batch_limit())
    eager = GpuModel(program, precision="fp16", device=CudaDevice())
    assert eager.mode == "eager" and "timed eagerly" in eager.reason
    ours = sorted(eager.time_once() for _ in range(30))[15]
    assert 0.5 < ours / triton_testing.do_bench(eager._call, rep=100) < 2.0


@pytest.mark.gpu
@requires_cuda
def test_compress_on_a_gpu_reports_the_gpus_latency(tmp_path, schema_errors):
    """compress on the cuda backend on the real device: the report's latency names the GPU and states a speed-up
    inside its interval, in the published shape (what the fake device cannot show: a real GPU's account)."""
    from prunefx.compress_options import Options
    from prunefx.compression import compress
    from prunefx.data.splits import DataSplits, tensor_batches
    from prunefx.named_recipes import Recipe
    from prunefx.passes.core.recipe import pipeline_from_spec

    torch.manual_seed(0)
    images, labels = torch.randn(64, 3, 32, 32), torch.arange(64) % 4
    splits = DataSplits(train=tensor_batches(images, labels, 32, shuffle=True), val=None,
                        test=tensor_batches(images, labels, 32, shuffle=False), classes=tuple("abcd"),
                        input_shape=(3, 32, 32))
    spec = {"name": "half", "passes": [{"remove_channels": {"macs": 0.5}}]}
    recipe = Recipe(name="half", path=None, spec=spec, pipeline=pipeline_from_spec(spec))
    dense = capture(nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 4)).eval(),
                    torch.randn(32, 3, 32, 32), name="net")
    report = compress(dense, recipe, splits, tmp_path / "out", data="tensors",
                      options=Options(runs=50, backend="cuda", precision="fp16", batch=32))
    latency = report["latency"]
    assert latency["backend"] == "cuda" and latency["batch_size"] == 32 and latency["measurement"]["gpu"]
    assert latency["interval"]["low"] <= latency["speedup"] <= latency["interval"]["high"]
    assert report["stages"][0]["latency"]["speedup"] > 0 and not schema_errors(report)


@pytest.mark.gpu
@requires_cuda
def test_profile_rows_are_gpu_work_on_a_gpu():
    program = _net(64, batch=8)
    profile = cuda_module.BACKEND.profile(
        cuda_module.BenchModel("net", program, None, list(program.example_inputs)), Settings(runs=5, warmup=2))
    convolutions = [row for row in profile.rows if row.layer_type == "conv2d"]
    assert len(convolutions) == 2 and all(0 < row.median_ms < 1.0 for row in convolutions)


def test_a_model_whose_capture_fails_is_sampled_eagerly_and_says_why(fake, monkeypatch):
    """A graph that synchronises with the host cannot be captured: the model is still timed (eager calls back to
    back) and the reason reaches the pair's notes."""
    def refuses(run, iterations=1):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(fake, "capture", refuses)
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        pair = latency_pair("cuda", threads=1, runs=2, warmup=0)
        dense_ms, narrow_ms, _ = pair(_net(16), _net(8))
    assert dense_ms == pytest.approx(MS_PER_WEIGHT * _weights(_net(16).module)) and narrow_ms < dense_ms
    assert pair.notes and "capture failed (RuntimeError: operation not permitted" in pair.notes[0]


def test_a_model_that_cannot_run_on_the_device_is_one_line_naming_it_and_how_it_was_placed(fake, monkeypatch,
                                                                                           capsys, tmp_path):
    """The first calls on the device (cuDNN's autotuning, torch.compile's tracing) fail for reasons of the model
    at that precision: one line naming the model and the precision, no traceback, nothing written."""
    def placed_badly(module, inputs, dtype):
        module.register_forward_pre_hook(lambda *_: (_ for _ in ()).throw(
            RuntimeError("value cannot be converted to type c10::Half without overflow\nmore")))
        return module, tuple(inputs)

    monkeypatch.setattr(fake, "place", placed_badly)
    with pytest.raises(MeasurementError, match=r"could not run 'net16' at fp16, compiled: RuntimeError: value cannot"):
        GpuModel(_net(16), precision="fp16", device=fake, compile=True)
    assert main(["bench", "prunefx:resnet20", "--input-shape", "1x1x28x28", "--backend", "cuda", "--runs", "2"]) \
        == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "could not run 'prunefx:resnet20' at fp16: RuntimeError" in err


def _refusing_the_narrow_one(fake):
    """The fake device's capture, refusing the graph of _net(8) (as a graph that synchronises with the host is)."""
    real_capture, refused = fake.capture, _weights(_net(8).module)

    def capture(run, iterations=1):
        run()
        if fake.last == refused:
            raise RuntimeError("operation not permitted when stream is capturing")
        return real_capture(run, iterations)
    return capture


def test_once_a_model_cannot_be_captured_both_models_of_the_pair_are_sampled_eagerly(fake, monkeypatch):
    """A dense model replayed as a graph against a candidate sampled as eager calls would credit the dense model
    with the launch savings: the dense model is sampled eagerly too, and so is every later candidate."""
    monkeypatch.setattr(fake, "capture", _refusing_the_narrow_one(fake))
    models = cuda_module.PreparedModels(fake, "fp16", 2, False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dense, _ = models.get(_net(16))
        assert dense.mode == "graph"
        narrow, _ = models.get(_net(8))
        later, _ = models.get(_net(4))
    assert (dense.mode, narrow.mode, later.mode) == ("eager", "eager", "eager")
    assert "could not be captured" in dense.reason and "capture failed" in narrow.reason
    assert "could not be captured" in later.reason


def test_the_dense_model_is_prepared_once_though_a_candidate_could_not_be_captured(fake, monkeypatch):
    """Models are kept by fingerprint and how they are sampled: the dense model, kept as a graph and sampled eagerly
    since the candidate's capture failed, was looked for as eager by the next pair, missed, and prepared (copied,
    placed, warmed, compiled with --compile) again."""
    monkeypatch.setattr(fake, "capture", _refusing_the_narrow_one(fake))
    pair = latency_pair("cuda", threads=1, runs=2, warmup=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pair(_net(16), _net(8))
        pair(_net(16), _net(4))
    facts = pair.facts()
    assert facts["models_prepared"] == 3 and facts["models_freed"] == 1
    assert [timing["mode"] for timing in facts["timing"]] == ["eager", "eager"]


def test_a_model_that_its_device_cannot_take_is_one_line_naming_it(fake, monkeypatch):
    """Placing is part of running: a layout or precision a tensor refuses, or the device's memory, is the same
    one-line MeasurementError as a first call that fails, not a traceback."""
    def refuses(module, inputs, dtype):
        raise RuntimeError("required rank 4 tensor to use channels_last format")

    monkeypatch.setattr(fake, "place", refuses)
    with pytest.raises(MeasurementError, match=r"could not run 'net16' at fp16: RuntimeError: required rank 4"):
        GpuModel(_net(16), precision="fp16", device=fake)


def test_bench_vs_samples_both_models_eagerly_when_one_cannot_be_captured(fake, monkeypatch):
    """`prunefx bench A --vs B --backend cuda`: a graph against eager calls would credit A with the launch savings."""
    monkeypatch.setattr(fake, "capture", _refusing_the_narrow_one(fake))
    models = [cuda_module.BenchModel(name, program, None, list(program.example_inputs))
              for name, program in (("dense", _net(16)), ("narrow", _net(8)))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = cuda_module.BACKEND.bench(models, Settings(runs=2, warmup=0))
    assert [timing["mode"] for timing in report["timing"]] == ["eager", "eager"] and not report["cuda_graph"]
    assert any("could not be captured" in note for note in report["notes"])


def test_a_profile_warms_the_gpu_on_the_whole_model_before_its_first_node(monkeypatch):
    """At idle clocks the first nodes read several times slower: the model runs for the device's warm-up time,
    until its times settle, before any node is timed."""
    device = FakeDevice()
    device.warm_seconds = 0.2
    order = []
    model = GpuModel(_net(16), precision="fp16", device=device, capture=False)
    whole = model.time_once
    monkeypatch.setattr(model, "time_once", lambda: order.append("model") or whole())
    recorded = cuda_node_profile.node_calls
    monkeypatch.setattr(cuda_node_profile, "node_calls", lambda m: {
        name: (lambda call=call: order.append("node") or call()) for name, call in recorded(m).items()})
    started = time.perf_counter()
    cuda_node_profile.cuda_profile(model, warmup=1, runs=2)
    assert time.perf_counter() - started >= 0.2
    assert order[0] == "model" and order.index("node") > 10


def test_a_prepared_model_and_a_torch_tensorrt_runner_go_when_dropped_without_a_cyclic_collection(fake):
    """A pair keeps two models on the GPU by dropping the others: a model that referred to itself (a replay or a
    sampler holding its bound method) stayed alive, with its GPU memory, until the next cyclic collection."""
    import gc
    import weakref

    from prunefx.runtime.tensorrt.torch_compiled import TorchTensorRTRunner
    gc.disable()
    try:
        for capture in (True, False):
            model = GpuModel(_net(16), precision="fp16", device=fake, capture=capture)
            model.time_once()
            gone = weakref.ref(model)
            del model
            assert gone() is None, capture
        runner = TorchTensorRTRunner(torch.nn.Identity(), (torch.zeros(1),), "fp32")
        gone = weakref.ref(runner)
        del runner
        assert gone() is None
    finally:
        gc.enable()


def test_after_models_turn_eager_a_pair_measured_as_graphs_is_measured_again(fake, monkeypatch):
    """The pair's cache answered a candidate met again with its graph-mode timing while the models were now
    sampled eagerly: its key says how the models are sampled."""
    real_capture = fake.capture
    refused = _weights(_net(8).module)

    def refuses_the_narrow_one(run, iterations=1):
        run()
        if fake.last == refused:
            raise RuntimeError("operation not permitted when stream is capturing")
        return real_capture(run, iterations)

    monkeypatch.setattr(fake, "capture", refuses_the_narrow_one)
    pair = latency_pair("cuda", threads=1, runs=2, warmup=0)
    dense, narrower = _net(16), _net(4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pair(dense, narrower)
        pair(dense, _net(8))  # cannot be captured: from here on every model is sampled eagerly
        timed = len(fake.timed)
        pair(dense, narrower)
    assert len(fake.timed) > timed  # measured again, eagerly


@pytest.mark.gpu
@requires_cuda
def test_bench_and_profile_on_a_real_gpu_end_to_end(capsys, tmp_path):
    """The commands as a user types them (their parts are tested on the GPU above, the commands on the fake)."""
    pt2 = _net(16, batch=4).save(tmp_path / "a.pt2")
    other = _net(8, batch=4).save(tmp_path / "b.pt2")
    assert main(["bench", str(pt2), "--vs", str(other), "--backend", "cuda", "--batch", "2", "--runs", "20",
                 "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["backend"] == "cuda" and report["batch"] == 2 and report["speedup"] > 0
    assert report["gpu"] == torch.cuda.get_device_name()
    assert main(["profile", str(pt2), "--backend", "cuda", "--runs", "5", "-o", str(tmp_path / "profile.json")]) == 0
    profile = json.loads((tmp_path / "profile.json").read_text())
    assert profile["source"] == "cuda" and sum(row["share"] for row in profile["layers"]) == pytest.approx(1)


def test_a_capture_out_of_gpu_memory_fails_in_one_line_and_is_not_blamed_on_the_model(fake, monkeypatch):
    """Out of memory is the GPU's state, not the model's: timing every later candidate eagerly would not help,
    and the note would say the model cannot be captured. The same holds for a graph captured again when warm."""
    def out_of_memory(run, iterations=1):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(fake, "capture", out_of_memory)
    with pytest.raises(MeasurementError, match=r"ran out of GPU memory timing 'net16': OutOfMemoryError: CUDA out"):
        GpuModel(_net(16), precision="fp16", device=fake)
    monkeypatch.undo()
    model = GpuModel(_net(16), precision="fp16", device=fake)
    monkeypatch.setattr(fake, "capture", out_of_memory)
    monkeypatch.setattr(fake, "time", lambda run, calls=1: cuda_graph.GRAPH_MIN_MS / 2)  # warm: launch-bound now
    with pytest.raises(MeasurementError, match="ran out of GPU memory timing 'net16'"):
        model.time_once()


@pytest.mark.parametrize("settings, missing, refusal", [
    (Settings(precision="bf16"), "bf16", r"precision bf16 needs a GPU with bfloat16 arithmetic.*Tesla T4 has none"),
    (Settings(compile=True), "triton", r"torch.compile \(inductor\) on a GPU needs the `triton` package"),
])
def test_what_this_gpu_cannot_time_is_refused_before_any_work(monkeypatch, settings, missing, refusal):
    """bf16 before Ampere is emulated (slower than fp32: every choice it steered would be wrong); --compile needs
    triton: both refused when the backend is checked, not after a latency table or a training run."""
    if missing == "bf16":
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")
    else:
        found = importlib.util.find_spec
        monkeypatch.setattr(importlib.util, "find_spec", lambda name, *rest: None if name == "triton" else found(name, *rest))
    with pytest.raises(BackendUnavailableError, match=refusal):
        CudaBackend(FakeDevice()).require(settings)
