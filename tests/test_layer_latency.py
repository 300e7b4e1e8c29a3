"""The per-layer latency table: grids of widths, interpolation, the on-disk cache per device, timers.

A fake timer gives each layer a time from a formula, so every figure is known by hand; the real timers are
checked for what they build (a one-layer model that computes the layer), not for how fast it runs."""

import contextlib
import json
import os
from dataclasses import replace

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F

from prunefx.graph import capture
from prunefx.graph.channels.timed_layers import TimedLayer, timed_layers
from prunefx.runtime import backends
from prunefx.runtime.backends import Settings
from prunefx.runtime.cuda.graph import CudaDevice
from prunefx.runtime.errors import BackendUnavailableError, MeasurementError
from prunefx.runtime.ort.kernel_profile import kernel_ms_by_operator, kernel_ms_per_run
from prunefx.runtime.tables.layer_models import LayerModule, layer_model
from prunefx.runtime.tables.table import build_latency_table, grid_widths, program_latency_table
from prunefx.runtime.tables.timer_by_name import layer_timer
from prunefx.runtime.tables.timers import OnnxRuntimeLayerTimer, TorchLayerTimer, cpu_model

CONV = TimedLayer("conv", "conv2d", (1, 64, 8, 8), 32, True, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1)


class FakeTimer:
    """ms = 0.01 * in + 0.02 * out + 0.5 (+ 0.001 * batch); records every layer it times."""

    backend, precision, settings = "fake", "fp32", "fake timer 1"

    def __init__(self, device="fake CPU A"):
        self.device, self.timed = device, []

    def __call__(self, layer):
        self.timed.append(layer.geometry())
        return 0.01 * layer.in_channels + 0.02 * layer.out_channels + 0.5 + 0.001 * layer.input_shape[0]


def _ms(in_channels, out_channels, batch=1):
    return 0.01 * in_channels + 0.02 * out_channels + 0.5 + 0.001 * batch


@pytest.mark.parametrize("dense, multiple, points, expected", [
    (64, 16, 4, (16, 32, 48, 64)),  # 13 channels at least (0.2 x 64): every multiple of 16 fits in 4 points
    (512, 16, 4, (112, 304, 496, 512)),  # 25 multiples from 112 to 496: the first, the middle, the last
    (10, 16, 4, (10,)),  # no multiple below the width: only the dense width (a fixed class count)
    (24, 16, 2, (16, 24)),
])
def test_grid_widths(dense, multiple, points, expected):
    assert grid_widths(dense, multiple, 0.8, points) == expected


def test_times_between_grid_widths_are_interpolated_and_below_it_scaled(tmp_path):
    table = build_latency_table([CONV], FakeTimer(), multiple=16, cache_dir=tmp_path)
    assert table.grids["conv"].in_widths == (16, 32, 48, 64) and table.grids["conv"].out_widths == (16, 32)
    assert table(CONV, 48, 32) == pytest.approx(_ms(48, 32))  # on the grid
    assert table(CONV, 40, 24) == pytest.approx(_ms(40, 24))  # bilinear is exact on a linear formula
    assert table(CONV, 8, 32) == pytest.approx(_ms(16, 32) * 8 / 16)  # below the grid: scaled with the width
    with pytest.raises(MeasurementError, match="no layer 'other'"):
        table(TimedLayer("other", "linear", (1, 8), 8, False), 8, 8)


def test_a_second_build_measures_nothing_and_equal_layers_are_timed_once(tmp_path):
    twin = TimedLayer("twin", *[getattr(CONV, f) for f in ("kind", "input_shape", "out_channels", "bias", "kernel",
                                                           "stride", "padding", "dilation", "groups")])
    first = FakeTimer()
    table = build_latency_table([CONV, twin], first, multiple=16, cache_dir=tmp_path)
    assert len(first.timed) == len(set(first.timed)) == 4 * 2 and table.measured == 8 and table.cached == 8
    again = FakeTimer()
    reread = build_latency_table([CONV, twin], again, multiple=16, cache_dir=tmp_path)
    assert again.timed == [] and reread.measured == 0 and reread.cached == 16
    assert reread.grids == table.grids


@pytest.mark.parametrize("change", ["device", "batch", "precision"])
def test_the_cache_never_hands_times_across_devices_batches_or_precisions(tmp_path, change):
    build_latency_table([CONV], FakeTimer(), multiple=16, cache_dir=tmp_path)
    timer, batch = FakeTimer("fake CPU B" if change == "device" else "fake CPU A"), None
    if change == "precision":
        timer.precision = "fp16"
    if change == "batch":
        batch = 8
    table = build_latency_table([CONV], timer, multiple=16, cache_dir=tmp_path, batch=batch)
    assert len(timer.timed) == 8 and table.cached == 0
    assert table(CONV, 64, 32) == pytest.approx(_ms(64, 32, batch or 1))
    # the first build's times are all still there (the batch is in each entry's key, the rest in the file's)
    files = [json.loads(path.read_text())["entries"] for path in tmp_path.glob("*.json")]
    assert len(files) == (1 if change == "batch" else 2) and sum(map(len, files)) == 16


class _Windows(torch.nn.Module):
    """Swin's way: each image's tokens cut into 4 windows, folded into the first dim before the linear layer."""

    def __init__(self):
        super().__init__()
        self.conv, self.qkv = torch.nn.Conv2d(3, 16, 1), torch.nn.Linear(16, 48)

    def forward(self, x):
        tokens = self.conv(x).flatten(2).transpose(1, 2)  # N x 64 x 16
        return self.qkv(tokens.reshape(-1, 16, 16))       # 4N x 16 x 16


@pytest.mark.parametrize("batch", [1, 6])
def test_a_table_times_each_layer_with_the_rows_it_sees_at_the_table_s_batch(tmp_path, batch):
    """The oracle: the same model captured at the table's batch, its layers' own input shapes."""
    captured = timed_layers(capture(_Windows().eval(), torch.randn(2, 3, 8, 8)).module)
    expected = {layer.name: layer.input_shape for layer in
                timed_layers(capture(_Windows().eval(), torch.randn(batch, 3, 8, 8)).module)}
    assert {layer.name: layer.with_batch(batch).input_shape for layer in captured} == expected
    rows = []

    class RowsTimer(FakeTimer):
        def __call__(self, layer):
            rows.append((layer.kind, layer.input_shape[0]))
            return super().__call__(layer)

    build_latency_table(captured, RowsTimer(), multiple=8, batch=batch, cache_dir=tmp_path)
    assert set(rows) == {("conv2d", batch), ("linear", 4 * batch)}


@pytest.mark.parametrize("text", ["{not json", "null", "[1, 2]"])
def test_an_unreadable_cache_is_measured_again(tmp_path, text):
    build_latency_table([CONV], FakeTimer(), multiple=16, cache_dir=tmp_path)
    (path,) = tmp_path.glob("*.json")
    path.write_text(text)
    timer = FakeTimer()
    build_latency_table([CONV], timer, multiple=16, cache_dir=tmp_path)
    assert len(timer.timed) == 8 and json.loads(path.read_text())["identity"]["device"] == "fake CPU A"


def test_a_cache_file_that_is_a_fifo_is_measured_again_not_waited_on(tmp_path):
    build_latency_table([CONV], FakeTimer(), multiple=16, cache_dir=tmp_path)
    (path,) = tmp_path.glob("*.json")
    path.unlink()
    os.mkfifo(path)  # a read would wait for a writer that never comes
    timer = FakeTimer()
    build_latency_table([CONV], timer, multiple=16, cache_dir=tmp_path)
    assert len(timer.timed) == 8


def test_two_processes_saving_one_cache_keep_each_others_times(tmp_path):
    # each wrote the entries it had read plus its own: the first saver's new times were lost
    from prunefx.runtime.tables.times_cache import LatencyCache

    identity = {"backend": "ort", "device": "fake CPU"}
    first, second = LatencyCache(identity, tmp_path), LatencyCache(identity, tmp_path)  # both read an empty cache
    first.put("conv A", 1.0)
    second.put("conv B", 2.0)
    first.save()
    second.save()
    assert LatencyCache(identity, tmp_path).entries == {"conv A": 1.0, "conv B": 2.0}


@pytest.mark.parametrize("value", [True, -1.0, "2.0", None, 1e308])
def test_a_cached_entry_that_is_no_time_is_measured_again(tmp_path, value):
    """JSON's `true` is a Python int: read as a time it said 1 ms; 1e308 ms made every sum of times inf."""
    build_latency_table([CONV], FakeTimer(), multiple=16, cache_dir=tmp_path)
    (path,) = tmp_path.glob("*.json")
    record = json.loads(path.read_text())
    record["entries"] = {key: value for key in record["entries"]}
    path.write_text(json.dumps(record))
    timer = FakeTimer()
    build_latency_table([CONV], timer, multiple=16, cache_dir=tmp_path)
    assert len(timer.timed) == 8


@pytest.mark.parametrize("options, message", [({"multiple": 0}, "multiple"), ({"points": 1}, "2 widths"),
                                              ({"max_ratio": 1.0}, "max_ratio"), ({"batch": 0}, "batch")])
def test_bad_settings_are_refused(tmp_path, options, message):
    with pytest.raises(MeasurementError, match=message):
        build_latency_table([CONV], FakeTimer(), **{"multiple": 16, **options}, cache_dir=tmp_path)


def test_a_timer_that_gives_no_time_is_refused(tmp_path):
    timer = FakeTimer()
    timer.__class__ = type("Broken", (FakeTimer,), {"__call__": lambda self, layer: float("inf")})
    with pytest.raises(MeasurementError, match="gave inf ms"):
        build_latency_table([CONV], timer, multiple=16, cache_dir=tmp_path)


class Block(torch.nn.Module):
    """A depthwise convolution between two pointwise ones, a 'same'-padded one and a linear head."""

    def __init__(self):
        super().__init__()
        self.expand = torch.nn.Conv2d(3, 32, 1)
        self.depthwise = torch.nn.Conv2d(32, 32, 3, stride=2, padding=1, groups=32, bias=False)
        self.same = torch.nn.Conv2d(32, 16, 4, padding="same")
        self.head = torch.nn.Linear(16, 5)

    def forward(self, x):
        return self.head(self.same(self.depthwise(self.expand(x))).mean((2, 3)))


def test_the_layers_of_a_program_with_their_geometry(tmp_path):
    program = capture(Block(), torch.randn(2, 3, 16, 16))
    expand, depthwise, same, head = timed_layers(program.module)  # in graph order
    assert expand.input_shape == (2, 3, 16, 16) and expand.out_channels == 32 and expand.bias
    assert (depthwise.input_shape, depthwise.stride, depthwise.padding) == ((2, 32, 16, 16), (2, 2), (1, 1, 1, 1))
    assert depthwise.groups == 32 and not depthwise.bias
    assert depthwise.resized(16, 16).groups == 16  # a depthwise convolution stays depthwise
    assert expand.resized(3, 16).groups == 1
    assert same.padding == (1, 1, 2, 2) and same.input_shape == (2, 32, 8, 8)  # 'same' with k=4: 3 = 1 + 2
    assert head.kind == "linear" and head.input_shape == (2, 16) and head.out_channels == 5
    timer = FakeTimer()
    table = program_latency_table(program, timer, multiple=8, batch=1, cache_dir=tmp_path)
    assert list(table.grids) == [expand.name, depthwise.name, same.name, head.name]
    assert timer.timed and all(" in=[1, " in geometry for geometry in timer.timed)  # timed at batch 1


class SweepingTimer(FakeTimer):
    """FakeTimer's times over three sweeps, each entry's first reading ten times slower (a busy stretch), its last
    ten times faster: only the median of the three is the formula's."""

    sweeps = 3

    def __call__(self, layer):
        ms = super().__call__(layer)
        return ms * {1: 10.0, 2: 1.0, 3: 0.1}[self.timed.count(layer.geometry())]


def test_a_timer_with_sweeps_times_the_whole_table_again_and_keeps_each_entry_s_median(tmp_path):
    """The oracle: FakeTimer's formula; every entry timed once a sweep, one sweep over the whole table after the
    other."""
    program = capture(Block(), torch.randn(2, 3, 16, 16))
    timer = SweepingTimer()
    table = program_latency_table(program, timer, multiple=8, batch=1, cache_dir=tmp_path)
    entries = list(dict.fromkeys(timer.timed))
    assert timer.timed == entries * 3 and table.measured == len(entries)
    for layer in timed_layers(program.module):
        grid = table.grids[layer.name]
        for i, in_width in enumerate(grid.in_widths):
            for j, out_width in enumerate(grid.out_widths):
                out_width = in_width * layer.out_channels // layer.in_channels if grid.tied else out_width
                assert grid.ms[i][j] == pytest.approx(_ms(in_width, out_width))
    again = SweepingTimer()
    assert program_latency_table(program, again, multiple=8, batch=1, cache_dir=tmp_path).measured == 0
    assert not again.timed
    assert "median of 3 sweeps" in OnnxRuntimeLayerTimer(sweeps=3).settings  # not read as a table of one reading
    assert "sweeps" not in OnnxRuntimeLayerTimer().settings


@pytest.mark.parametrize("layer", [
    TimedLayer("c", "conv2d", (1, 8, 9, 9), 6, True, (3, 3), (2, 2), (0, 1, 2, 1), (1, 1), 2),
    TimedLayer("d", "conv2d", (2, 8, 7, 7), 8, False, (3, 3), (1, 1), (1, 1, 1, 1), (2, 2), 8),
    TimedLayer("l", "linear", (2, 5, 12), 7, True),
    TimedLayer("a", "attention", (2, 3, 5, 8), 8, False),
    TimedLayer("m", "attention", (2, 3, 5, 8), 8, False, score_terms=1),
    TimedLayer("p", "attention_products", (2, 3, 5, 8), 8, False, score_terms=2),
    TimedLayer("r", "attention", (2, 3, 5, 8), 8, False, score_terms=1, keys=2),  # k and v over fewer tokens
    TimedLayer("s", "attention_products", (2, 3, 5, 8), 8, False, keys=3),
    TimedLayer("n", "layer_norm", (2, 5, 12), 12, True),
    TimedLayer("o", "layer_norm", (2, 3, 3, 12), 12, False),  # ConvNeXt's, over the channels of N x H x W x C
])
def test_the_one_layer_models_compute_the_layer(layer):
    """The ONNX model and the torch module both compute what torch's own functional layer computes (an attention:
    its formula written out)."""
    module = LayerModule(layer)
    x = torch.randn(layer.input_shape)
    w, b = module.weight, module.bias
    feed = {"x": x.numpy()}
    if layer.kind.startswith("attention"):
        terms = sum((buffer for name, buffer in module.named_buffers() if name.startswith("score_term")),
                    torch.zeros(()))
        assert terms.dim() == (3 if layer.score_terms else 0)  # each term [heads, tokens, keys]
        kv = module.kv.reshape(*layer.input_shape[:2], layer.keys, -1) if layer.keys else x
        feed.update({"kv": kv.numpy()} if layer.keys else {})
        expected = torch.softmax(x @ kv.transpose(-1, -2) / layer.out_channels ** 0.5 + terms, dim=-1) @ kv
    elif layer.kind == "linear":
        expected = F.linear(x, w, b)
    elif layer.kind == "layer_norm":
        mean, var = x.mean(-1, keepdim=True), x.var(-1, unbiased=False, keepdim=True)
        expected = (x - mean) / torch.sqrt(var + 1e-5) * w + (b if b is not None else 0.0)
    else:
        top, left, bottom, right = layer.padding
        expected = F.conv2d(F.pad(x, (left, right, top, bottom)), w, b, layer.stride, 0, layer.dilation, layer.groups)
    for lead_in in (False, True):  # the timed model's lead-in computes the identity
        session = ort.InferenceSession(layer_model(layer, lead_in=lead_in).SerializeToString(),
                                       providers=["CPUExecutionProvider"])
        (onnx_out,) = session.run(None, feed)
        np.testing.assert_allclose(onnx_out, expected.numpy(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(module(x), expected)


def _profile_event(name: str, ts: int, dur: int, op: str | None = None) -> dict:
    if op is None:
        return {"cat": "Session", "name": name, "ts": ts, "dur": dur}
    return {"cat": "Node", "name": f"{name}_kernel_time", "ts": ts, "dur": dur, "args": {"op_name": op}}


def test_kernel_times_add_up_per_run_without_the_layout_reorders():
    events = [_profile_event("model_run", 100, 50), _profile_event("model_run", 200, 60),
              _profile_event("conv", 112, 30, "Conv"), _profile_event("x_nchwc", 103, 2, "ReorderInput"),
              _profile_event("lead_nchwc", 106, 3, "Conv"), _profile_event("y", 143, 5, "ReorderOutput"),
              _profile_event("x_nchwc", 201, 2, "ReorderInput"), _profile_event("lead_nchwc", 204, 4, "Conv"),
              _profile_event("conv", 212, 40, "Conv"), _profile_event("y", 253, 5, "ReorderOutput"),
              _profile_event("session_initialization", 0, 90)]
    assert kernel_ms_per_run(events) == pytest.approx([0.033, 0.044])  # microseconds in, milliseconds out
    assert kernel_ms_per_run(events, skip=1) == pytest.approx([0.044])
    assert kernel_ms_per_run(events, left_out=frozenset()) == pytest.approx([0.040, 0.051])
    assert kernel_ms_per_run(events, lead=1) == pytest.approx([0.030, 0.040])  # the lead-in ran first, in order
    by_operator = kernel_ms_by_operator(events)  # per run, over both
    assert list(by_operator) == ["Conv", "ReorderOutput", "ReorderInput"]
    assert by_operator == pytest.approx({"Conv": 0.0385, "ReorderOutput": 0.005, "ReorderInput": 0.002})
    assert kernel_ms_by_operator(events, skip=1) == pytest.approx({"Conv": 0.044, "ReorderInput": 0.002,
                                                                   "ReorderOutput": 0.005})


def test_the_timers_return_a_time_and_say_where_they_ran(tmp_path):
    ort_timer = OnnxRuntimeLayerTimer(warmup=1, runs=3)
    assert 0.0 < ort_timer(CONV) < 1e3 and ort_timer.device == cpu_model()
    assert ort.__version__ in ort_timer.settings and "1 thread," in ort_timer.settings
    # the operator work of a run is part of that run, as the profiler's own span of the run says
    options = ort.SessionOptions()
    options.enable_profiling, options.profile_file_prefix = True, str(tmp_path / "p")
    session = ort.InferenceSession(layer_model(CONV).SerializeToString(), options, providers=["CPUExecutionProvider"])
    for _ in range(3):
        session.run(None, {"x": np.ones(CONV.input_shape, np.float32)})
    events = json.loads(open(session.end_profiling()).read())
    runs = [event["dur"] / 1e3 for event in events if event.get("name") == "model_run"]
    every_node, without_layout = kernel_ms_per_run(events, left_out=frozenset()), kernel_ms_per_run(events)
    assert len(every_node) == len(runs) == 3 and all(0 < w <= e <= r for w, e, r in zip(without_layout, every_node, runs))
    seen = []
    torch_timer = TorchLayerTimer(time_module=lambda module, inputs: seen.append(module(*inputs).shape) or 2.5,
                                  device="Fake GPU", precision="fp16", backend="cuda", settings="fake")
    assert torch_timer(CONV) == 2.5 and seen == [torch.Size([1, 32, 8, 8])]
    assert (torch_timer.backend, torch_timer.device, torch_timer.precision) == ("cuda", "Fake GPU", "fp16")
    with pytest.raises(ValueError, match="on cuda give a time_module that waits for the device"):
        TorchLayerTimer(torch_device="cuda")  # the host's clock would time the launches, not the work


def test_cpu_model_reads_the_model_name():
    assert cpu_model("processor\t: 0\nmodel name\t: AMD EPYC 7B13\nflags\t: avx2\n") == "AMD EPYC 7B13"
    assert cpu_model("processor\t: 0\n")  # something, from platform


class FakeGpu(CudaDevice):
    """A CPU standing in for a GPU: its timer answers 1 us per convolution weight of the module that ran and
    records the input batch of each timed call."""

    warm_seconds = 0.0

    def __init__(self, available: bool = True):
        self.is_available, self.batches, self.weights, self.batch = available, [], 0, None
        self.captures, self.released, self.inputs = 0, 0, []

    def available(self) -> bool:
        return self.is_available

    def describe(self) -> dict:
        return {"gpu": "Fake H100", "torch": torch.__version__, "cuda": None}

    def place(self, module, inputs, dtype):
        self.weights = sum(p.numel() for p in module.parameters() if p.dim() == 4)
        self.batch = int(inputs[0].shape[0])
        self.inputs.append(inputs[0])
        return module, tuple(inputs)

    def compile(self, module):
        return module

    def capture(self, run, iterations=1):
        self.captures += 1
        return run

    def time(self, run, calls=1) -> float:
        run()
        self.batches.append(self.batch)
        return 1e-3 * self.weights

    def release(self):
        self.released += 1


def test_a_table_on_the_cuda_backend_times_each_layer_as_a_plain_module(tmp_path, monkeypatch):
    """The cost of a cuda table: one capture per entry and nothing exported or captured as a Program (the
    stand-in for torch.export refuses to run)."""
    gpu = FakeGpu()
    monkeypatch.setattr(backends.get("cuda"), "device", gpu)
    monkeypatch.setattr("prunefx.runtime.tables.timer_by_name.capture", _no_export)
    timer = layer_timer("cuda", Settings(runs=3, warmup=1, batch=8))
    assert (timer.backend, timer.device, timer.precision) == ("cuda", "Fake H100", "fp16")
    table = build_latency_table([CONV], timer, multiple=16, batch=2, cache_dir=tmp_path)
    assert table(CONV, 64, 32) == pytest.approx(1e-3 * 64 * 32 * 9)  # 32 x 64 x 3 x 3 weights
    assert table(CONV, 32, 16) == pytest.approx(1e-3 * 32 * 16 * 9)
    assert set(gpu.batches) == {2}  # the table's batch, not the settings'
    assert gpu.captures == table.measured == gpu.released  # one graph per entry, each freed once timed
    # one input drawn per input width, handed to the device again for each output width
    widths = table.grids["conv"].in_widths
    assert len({id(x) for x in gpu.inputs}) == len(widths) < len(gpu.inputs) == table.measured
    assert sorted({x.shape[1] for x in gpu.inputs}) == sorted(widths)
    assert json.loads(next(tmp_path.glob("cuda-*.json")).read_text())["identity"]["device"] == "Fake H100"


def test_a_cuda_table_times_a_layer_norm_on_its_rows_flattened(tmp_path, monkeypatch):
    """ConvNeXt's N x H x W x C layer norm runs on the device as N x HW x C (a 4-D input would be made
    channels_last), one entry per width of its one axis."""
    gpu = FakeGpu()
    monkeypatch.setattr(backends.get("cuda"), "device", gpu)
    norm = TimedLayer("norm", "layer_norm", (1, 7, 7, 32), 32, True)
    table = build_latency_table([norm], layer_timer("cuda", Settings(runs=3, warmup=1)), multiple=8, batch=2,
                                cache_dir=tmp_path)
    assert table.measured == 4 and {tuple(x.shape) for x in gpu.inputs} == {(2, 49, w) for w in (8, 16, 24, 32)}


def test_a_cuda_table_warms_the_gpu_up_again_after_it_was_left_idle(tmp_path, monkeypatch):
    """Entries that follow each other keep the clocks up; the merged network's table of a joint search comes after
    seconds of CPU work, and its first entry is warmed up again rather than timed at idle clocks."""
    from prunefx.runtime.cuda import layer_timer as cuda_timer

    gpu, warmed, now = FakeGpu(), [], [0.0]
    gpu.warm_seconds = 0.3
    real = cuda_timer.measure_gpu_latency
    monkeypatch.setattr(cuda_timer, "measure_gpu_latency",
                        lambda *args, warm_seconds, **kwargs: warmed.append(warm_seconds) or real(*args, **kwargs))
    monkeypatch.setattr(cuda_timer.time, "monotonic", lambda: now[0])
    monkeypatch.setattr(backends.get("cuda"), "device", gpu)
    timer = layer_timer("cuda", Settings(runs=3, warmup=1, batch=8))
    table = build_latency_table([CONV], timer, multiple=16, batch=2, cache_dir=tmp_path)
    assert warmed[0] == 0.3 and set(warmed[1:]) == {0.0} and len(warmed) == table.measured
    now[0] += 5.0  # the GPU idle meanwhile
    warmed.clear()
    build_latency_table([replace(CONV, name="merged", kernel=(5, 5))], timer, multiple=16, batch=2, cache_dir=tmp_path)
    assert warmed[0] == 0.3 and set(warmed[1:]) == {0.0}


def _no_export(*args, **kwargs):
    raise AssertionError("a cuda latency-table entry must not be exported or captured as a Program")


def test_the_batch_from_which_entries_are_timed_eagerly_keys_a_cuda_table_cache_of_its_own(monkeypatch):
    """Entries at batches from the capture limit are eager calls, not graph replays: times taken under another
    limit are not handed over."""
    monkeypatch.setattr(backends.get("cuda"), "device", FakeGpu())
    settings = []
    for limit in ("64", "16"):
        monkeypatch.setenv("PRUNEFX_CUDA_CAPTURE_BATCH_LIMIT", limit)
        settings.append(layer_timer("cuda", Settings()).settings)
    assert settings[0] != settings[1] and "below batch 64" in settings[0]


def test_a_tensorrt_upgrade_keys_a_table_cache_of_its_own(monkeypatch):
    """The version of what measures is in the cache's identity: times taken under TensorRT 10.3 are not handed
    to 10.8 (the engine cache keys on it too)."""
    from prunefx.runtime.backends.trt import TensorRTBackend
    from prunefx.runtime.tables.timer_by_name import BackendLayerTimer
    monkeypatch.setattr(TensorRTBackend, "require", lambda self, settings, purpose="budget": "fp16")
    settings = []
    for version in ("10.3.0", "10.8.0"):
        monkeypatch.setattr(TensorRTBackend, "software", lambda self, s, version=version: f"TensorRT {version}")
        settings.append(BackendLayerTimer(TensorRTBackend(), Settings()).settings)
    assert settings[0] != settings[1] and "TensorRT 10.3.0" in settings[0]


def test_a_tensorrt_table_cache_is_keyed_on_the_gpu_not_on_the_host_s_cpu(monkeypatch):
    """Two GPUs behind one CPU model (cloud nodes, a shared cache folder) do not share their times."""
    from prunefx.runtime.backends.torch_eager import TorchEagerBackend
    from prunefx.runtime.backends.trt import TensorRTBackend
    from prunefx.runtime.tables.timer_by_name import BackendLayerTimer
    monkeypatch.setattr(TensorRTBackend, "require", lambda self, settings, purpose="budget": "fp16")
    monkeypatch.setattr(TensorRTBackend, "software", lambda self, settings: "TensorRT 10.8.0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    devices = []
    for gpu in ("NVIDIA H100 80GB HBM3", "NVIDIA L4"):
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None, gpu=gpu: gpu)
        devices.append(BackendLayerTimer(TensorRTBackend(), Settings()).device)
    assert devices == ["NVIDIA H100 80GB HBM3", "NVIDIA L4"]
    assert BackendLayerTimer(TorchEagerBackend(), Settings()).device not in devices  # a CPU backend: the CPU


def test_layer_timers_by_backend_name():
    ort_timer = layer_timer("ort", Settings(threads=1))
    assert isinstance(ort_timer, OnnxRuntimeLayerTimer) and (ort_timer.threads, ort_timer.runs) == (1, 10)
    with pytest.raises(MeasurementError, match="unknown backend"):
        layer_timer("nonesuch", Settings())


def test_an_onnx_runtime_layer_table_is_timed_with_the_measurements_session_options(monkeypatch):
    """A latency table predicts the whole models' times: its sessions take the Measurement's spinning and
    subnormals (read at the session options the timer asks for), and a table of each is its own."""
    from prunefx.runtime.ort import kernel_profile

    asked = []
    real = kernel_profile.session_options
    monkeypatch.setattr(kernel_profile, "session_options", lambda threads, spinning, flush_denormals, **profiler:
                        asked.append((spinning, flush_denormals)) or real(threads, spinning, flush_denormals, **profiler))
    timer = layer_timer("ort", Settings(threads=1, runs=1, warmup=0, spinning=False, flush_denormals=False))
    timer(CONV)
    assert asked and set(asked) == {(False, False)}
    default = layer_timer("ort", Settings(threads=1))
    assert "not spinning" in timer.settings and "subnormals kept" in timer.settings
    assert "not spinning" not in default.settings


def test_a_missing_gpu_is_refused_before_anything_is_timed(monkeypatch):
    monkeypatch.setattr(backends.get("cuda"), "device", FakeGpu(available=False))
    with pytest.raises(BackendUnavailableError):
        layer_timer("cuda", Settings())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_cuda_table_on_a_real_gpu(tmp_path):
    """A convolution, a ViT-B attention (12 heads of 64 over 197 tokens), fused and spelled out with a bias, and
    ConvNeXt-T's first layer norm (N x 56 x 56 x 96) on the GPU: every entry a plausible time, a quarter of the heads
    faster than all of them (the grid steps through heads), and the norm at its narrowest faster than at full width."""
    timer = layer_timer("cuda", Settings(runs=20, warmup=5))
    attention = TimedLayer("attention", "attention", (1, 12, 197, 64), 64, False)
    spelled = TimedLayer("spelled", "attention_products", (1, 12, 197, 64), 64, False, score_terms=1)
    norm = TimedLayer("norm", "layer_norm", (1, 56, 56, 96), 96, True)
    table = build_latency_table([CONV, attention, spelled, norm], timer, multiple=8, batch=32, cache_dir=tmp_path)
    assert timer.device == torch.cuda.get_device_name() and table.measured == 3 * 4 * 4 + 4
    assert all(0 < ms < 100 for grid in table.grids.values() for row in grid.ms for ms in row)
    assert table(attention, 3, 64) < table(attention, 12, 64) and table(spelled, 3, 64) < table(spelled, 12, 64)
    assert table(norm, 24, 24) < table(norm, 96, 96)


class Grouped(torch.nn.Module):
    """A depthwise convolution with a channel multiplier of 2, and a grouped one whose groups (4) do not divide
    every multiple of 8: only widths the runtime can run may be timed."""

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 24, 1)
        self.depthwise = torch.nn.Conv2d(24, 48, 3, padding=1, groups=24)
        self.grouped = torch.nn.Conv2d(48, 40, 3, padding=1, groups=4)

    def forward(self, x):
        return self.grouped(self.depthwise(self.stem(x)))


def test_depthwise_and_grouped_layers_are_timed_only_at_widths_they_run(tmp_path):
    program = capture(Grouped().eval(), torch.randn(1, 3, 8, 8))
    stem, depthwise, grouped = timed_layers(program.module)
    timer = FakeTimer()
    table = program_latency_table(program, timer, multiple=8, batch=1, cache_dir=tmp_path)
    for geometry in timer.timed:  # every timed layer's groups divide both its widths
        inputs, out, groups = (int(geometry.split(key)[1].split(",")[0].split("]")[0].split(" ")[0])
                               for key in ("in=[1, ", "out=", "g="))
        assert inputs % groups == 0 and out % groups == 0, geometry
    tied = table.grids[depthwise.name]
    assert tied.tied and tied.out_widths == (48,)  # one axis: the output follows the input, times 2
    assert table(depthwise, 16, 32) == pytest.approx(_ms(16, 32)) and table(depthwise, 16, 999) == table(depthwise, 16, 32)
    assert set(table.grids[grouped.name].in_widths) <= {8, 16, 24, 32, 40, 48}
    assert all(w % 8 == 0 for w in table.grids[grouped.name].out_widths)
    # the ONNX Runtime timer runs every geometry of this table (a width its groups do not divide would fail)
    program_latency_table(program, layer_timer("ort", Settings(threads=1, runs=1, warmup=0)), multiple=8, batch=1,
                          cache_dir=tmp_path / "ort")


def test_a_table_answers_for_its_own_layers_narrowed_and_refuses_a_layer_of_another_shape(tmp_path):
    """Layers are found by name, and another model's, or the same model at another input size, has the same
    names: its times would be other layers'. The oracle: the fake timer's formula for the layer asked."""
    timer = FakeTimer()
    table = program_latency_table(capture(Grouped().eval(), torch.randn(1, 3, 8, 8)), timer, multiple=8, batch=1,
                                  cache_dir=tmp_path)
    stem, depthwise, _ = timed_layers(capture(Grouped().eval(), torch.randn(4, 3, 8, 8)).module)  # another batch
    assert table(stem, 3, 16) == pytest.approx(_ms(3, 16)) and table(depthwise, 16, 32) == pytest.approx(_ms(16, 32))
    narrowed = stem.resized(3, 16)  # a model already cut from the one the table was timed on
    assert table(narrowed, 3, 8) == pytest.approx(_ms(3, 8))
    larger, _, _ = timed_layers(capture(Grouped().eval(), torch.randn(1, 3, 32, 32)).module)
    with pytest.raises(MeasurementError, match="another model or input size"):
        table(larger, 3, 16)
    with pytest.raises(MeasurementError, match="another model or input size"):
        table(replace(stem, kernel=(3, 3), padding=(1, 1, 1, 1)), 3, 16)


def test_layers_are_timed_with_the_norm_and_activation_that_alone_read_them():
    """In context: a convolution with the batch norm and activation after it, a linear layer with its GELU; a
    convolution whose output two operators read (a residual) is priced alone."""

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.norm = torch.nn.Conv2d(4, 8, 3, padding=1), torch.nn.BatchNorm2d(8)
            self.shared, self.head = torch.nn.Conv2d(8, 8, 1), torch.nn.Linear(8, 6)

        def forward(self, x):
            y = torch.nn.functional.relu6(self.norm(self.conv(x)))
            z = self.shared(y)
            y = z + torch.sigmoid(z)
            return torch.nn.functional.gelu(self.head(y.mean((2, 3))))

    program = capture(Block().eval(), torch.randn(1, 4, 6, 6), name="block")
    found = {layer.name: layer.epilogue for layer in timed_layers(program.module)}
    assert sorted(found.values()) == [(), ("batch_norm", "relu6"), ("gelu",)]
    layer = next(layer for layer in timed_layers(program.module) if layer.epilogue == ("batch_norm", "relu6"))
    assert layer.geometry().endswith(" e=batch_norm+relu6") and layer.resized(8, 16).epilogue == layer.epilogue


@pytest.mark.parametrize("epilogue", [("batch_norm", "relu"), ("batch_norm", "relu6"), ("silu",), ("gelu",),
                                      ("batch_norm", "hardswish"), ("hardsigmoid",), ("sigmoid",)])
def test_the_onnx_and_torch_renderings_of_a_layer_in_context_compute_the_same(epilogue):
    """Two independent renderings of one layer with its epilogue (ONNX nodes run by ONNX Runtime, torch
    functions) agree: the ORT timer and the GPU timer price the same computation."""
    kind = "linear" if epilogue == ("gelu",) else "conv2d"
    layer = (TimedLayer("l", "linear", (2, 5, 12), 7, True, epilogue=epilogue) if kind == "linear" else
             replace(CONV, epilogue=epilogue))
    x = torch.randn(layer.input_shape, generator=torch.Generator().manual_seed(3))
    session = ort.InferenceSession(layer_model(layer).SerializeToString(), providers=["CPUExecutionProvider"])
    (onnx_out,) = session.run(None, {"x": x.numpy()})
    with torch.no_grad():
        torch_out = LayerModule(layer).eval()(x)
    torch.testing.assert_close(torch.from_numpy(onnx_out), torch_out, rtol=1e-4, atol=1e-4)


def test_a_linear_layer_s_4d_input_is_timed_contiguous_with_the_same_rows():
    """ConvNeXt's MLP reads N x H x W x C, contiguous in the model (a permuted channels_last convolution
    output); placed 4-D, the device would make the probe channels_last and F.linear would time a copy too."""
    from prunefx.runtime.cuda.graph import _placed
    from prunefx.runtime.cuda.layer_timer import probe_shape

    linear = TimedLayer("fc1", "linear", (2, 7, 7, 96), 384, True)
    probe = _placed(torch.randn(probe_shape(linear)), "cpu", torch.float16, torch.channels_last)  # as CudaDevice.place makes it
    assert probe.is_contiguous() and probe.shape == (2, 49, 96)
    assert F.linear(probe, torch.zeros(384, 96, dtype=torch.float16)).numel() == 2 * 7 * 7 * 384
    assert probe_shape(CONV) == CONV.input_shape  # a convolution's input stays 4-D (and channels_last)
    assert probe_shape(TimedLayer("norm", "layer_norm", (2, 7, 7, 96), 96, True)) == (2, 49, 96)  # the norm before it


class Stream(torch.nn.Module):
    """A transformer's residual stream in ConvNeXt's layout, N x H x W x C: a layer norm over C, an MLP, the
    residual add; then a layer norm without a shift."""

    def __init__(self):
        super().__init__()
        self.norm, self.fc1, self.fc2 = torch.nn.LayerNorm(32), torch.nn.Linear(32, 64), torch.nn.Linear(64, 32)
        self.last = torch.nn.LayerNorm(32, bias=False)

    def forward(self, x):
        x = x.permute(0, 2, 3, 1)
        return self.last(x + self.fc2(F.gelu(self.fc1(self.norm(x)))))


def test_layer_norms_are_timed_on_one_axis_of_their_channels(tmp_path):
    """A layer norm over the last dim is a layer of one width (its output's is its input's), timed on the grid of
    its channels; the oracle is the fake timer's formula at in = out."""
    program = capture(Stream().eval(), torch.randn(2, 32, 3, 3))
    norm, fc1, fc2, last = timed_layers(program.module)
    assert (norm.kind, norm.input_shape, norm.out_channels, norm.bias, norm.tied) == ("layer_norm", (2, 3, 3, 32), 32,
                                                                                     True, True)
    assert (last.kind, last.bias, fc1.kind, fc1.epilogue) == ("layer_norm", False, "linear", ("gelu",))
    assert norm.resized(16, 999) == replace(norm, input_shape=(2, 3, 3, 16), out_channels=16)
    timer = FakeTimer()
    table = program_latency_table(program, timer, multiple=8, batch=1, cache_dir=tmp_path)
    grid = table.grids[norm.name]
    assert grid.tied and grid.in_widths == (8, 16, 24, 32) and grid.out_widths == (32,)
    assert table(norm, 16, 16) == pytest.approx(_ms(16, 16)) and table(norm, 20, 20) == pytest.approx(_ms(20, 20))
    assert {geometry for geometry in timer.timed if geometry.startswith("layer_norm")} == {
        f"layer_norm in=[1, 3, 3, {w}] out={w} bias={b} k=[] s=[] p=[] d=[] g=1" for w in (8, 16, 24, 32)
        for b in (0, 1)}


class Attention(torch.nn.Module):
    """Attention over 3 heads of 8 dims, fused: plain, with a mask, with a mask wider than its scores, causal, over 7
    keys; spelled out: with a bias (and a view) between the products, and over 7 keys; with v's head dims other than
    q's; 3-D, heads merged into the batch."""

    def __init__(self):
        super().__init__()
        self.bias = torch.nn.Parameter(torch.randn(3, 5, 5))

    def forward(self, x, memory):
        q, m = x.view(1, 5, 3, 8).transpose(1, 2), memory.view(1, 7, 3, 8).transpose(1, 2)
        sdpa = F.scaled_dot_product_attention
        fused = (sdpa(q, q, q), sdpa(q, q, q, attn_mask=self.bias), sdpa(q, q, q, attn_mask=torch.zeros(2, 3, 5, 5)),
                 sdpa(q, q, q, is_causal=True), sdpa(q, m, m))
        scores = ((q * 0.3) @ q.transpose(-2, -1) + self.bias).view(1, 3, 25).view(1, 3, 5, 5)
        spelled = (torch.softmax(scores, dim=-1) @ q, torch.softmax(q @ m.transpose(-2, -1), dim=-1) @ m)
        flat, wide_v = q.reshape(3, 5, 8), torch.cat([q, q], dim=-1)
        return fused + spelled + (sdpa(q, q, wide_v), torch.softmax(flat @ flat.transpose(1, 2), dim=-1) @ flat)


def test_self_attention_is_timed_on_a_grid_of_heads_and_head_dims(tmp_path):
    """Attention with heads whose q and v have one head dim is timed, fused or spelled out, over its keys, a mask or
    bias on its scores as an additive term; not causal attention; its grid steps through heads one at a time, and
    through head dims by the width multiple; its 3-D probe is the 4-D q as a view."""
    from prunefx.runtime.cuda.layer_timer import probe_shape

    program = capture(Attention().eval(), (torch.randn(1, 5, 24), torch.randn(1, 7, 24)))
    attention, masked, across, spelled, spelled_across = [
        layer for layer in timed_layers(program.module) if layer.kind.startswith("attention")]
    found = (attention, masked, across, spelled, spelled_across)
    assert [(layer.kind, layer.score_terms, layer.keys) for layer in found] == [
        ("attention", 0, 0), ("attention", 1, 0), ("attention", 0, 7), ("attention_products", 1, 0),
        ("attention_products", 0, 7)]
    assert across.geometry().endswith(" kv=7") and across.resized(2, 4).keys == 7
    assert spelled.input_shape == attention.input_shape and spelled.geometry().endswith(" t=1")
    assert (attention.input_shape, attention.in_channels, attention.out_channels) == ((1, 3, 5, 8), 3, 8)
    assert attention.resized(2, 4).input_shape == (1, 2, 5, 4)
    table = build_latency_table([attention], FakeTimer(), multiple=4, max_ratio=0.7, cache_dir=tmp_path)
    assert (table.grids[attention.name].in_widths, table.grids[attention.name].out_widths) == ((1, 2, 3), (4, 8))
    probe = torch.randn(probe_shape(attention))
    assert probe.shape == (3, 5, 8) and LayerModule(attention)(probe).shape == (1, 3, 5, 8)


def test_a_cache_that_cannot_be_saved_still_gives_the_table_just_timed(caplog):
    """The cache only spares the next table its timings: a folder that takes no files (/proc) costs a warning."""
    timer = FakeTimer()
    table = build_latency_table([CONV], timer, multiple=16, cache_dir="/proc/prunefx-no-cache")
    assert table.measured == len(timer.timed) == 8
    assert "could not save the cache" in caplog.text


def test_the_public_table_times_a_program_on_cuda_n_on_that_gpu(monkeypatch, tmp_path):
    """The layer timers place layers on "cuda", the current GPU: the table of a Program on cuda:1 is timed with
    cuda:1 current, as meet_budget does (stood in for: the device the Program is on, and what is current)."""
    import prunefx
    import prunefx.layer_latency as module
    import prunefx.runtime.tables.table as tables

    current = []

    @contextlib.contextmanager
    def made_current(device):
        current.append(device)
        yield
        current.pop()

    timed_on = []
    monkeypatch.setattr(module, "module_device", lambda _: torch.device("cuda", 1))
    monkeypatch.setattr(module, "current_gpu", made_current)
    monkeypatch.setattr(tables, "program_latency_table", lambda *args, **kwargs: timed_on.append(list(current)))
    prunefx.latency_table(capture(torch.nn.Conv2d(3, 8, 3).eval(), torch.randn(1, 3, 8, 8)), cache_dir=str(tmp_path))
    assert timed_on == [[torch.device("cuda", 1)]] and current == []


def test_a_table_entry_takes_the_same_few_runs_on_every_backend_that_times_it_as_a_program(monkeypatch):
    """An entry on a backend timed through `time_program` (TensorRT, torch) gets at most 3 warm-up and 10 timed
    runs, as ONNX Runtime's entries do, not the 50 of a whole-model measurement: a table has hundreds of entries."""
    from prunefx.graph.channels.timed_layers import TimedLayer
    from prunefx.runtime.backends.torch_eager import TorchEagerBackend
    from prunefx.runtime.tables.timer_by_name import BackendLayerTimer

    asked = []
    monkeypatch.setattr(TorchEagerBackend, "time_program",
                        lambda self, program, settings: asked.append(settings) or {"median_ms": 1.0})
    timer = BackendLayerTimer(TorchEagerBackend(), Settings(runs=50, warmup=10))
    layer = TimedLayer("fc", "linear", (1, 8), 4, True)
    assert timer(layer) == 1.0
    assert (asked[0].runs, asked[0].warmup) == (10, 3)
    small = BackendLayerTimer(TorchEagerBackend(), Settings(runs=5, warmup=1))
    small(layer)
    assert (asked[1].runs, asked[1].warmup) == (5, 1)  # fewer asked: fewer taken
