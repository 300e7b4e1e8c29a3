"""Layer timers for latency tables (runtime/tables/table.py): one layer, built alone, timed on a backend.

`OnnxRuntimeLayerTimer` ("ort") times a one-layer ONNX model's operator work as ONNX Runtime profiles it;
`TorchLayerTimer` ("torch") times the layer as a module through a `time_module` function a GPU backend can supply
(both renderings of the layer: runtime/tables/layer_models.py). A timer's
identity (device, library version, threads) keys the cache. Details: docs/algorithms.md, 'Latency tables'.
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Sequence

import onnxruntime as ort
import torch

from prunefx.graph.channels.timed_layers import TimedLayer
from prunefx.graph.counted import counted
from prunefx.runtime.measure.latency import measure_latency
from prunefx.runtime.measure.width_multiple import CPUINFO
from prunefx.runtime.ort.denormals import subnormal_mode
from prunefx.runtime.ort.kernel_profile import median_kernel_ms, median_kernel_ms_by, profiled_runs
from prunefx.runtime.ort.runners import timing_flushes_denormals
from prunefx.runtime.tables.layer_models import LayerModule, layer_feed, layer_model, weight_bytes
from prunefx.runtime.tables.table_model import entry_of, table_model

# sweeps of a table timed on the CPU: the median of three made two builds' entries agree far better but chose no
# faster channels than one reading, at three times the cost (docs/benchmarks/latency-aware-choice.md)
CPU_SWEEPS = 1
# weights of the entries one model of a table holds: what a run pushes out of the caches between two runs of an entry
# (more than a CPU's last-level cache), and the memory the timing takes (about twice it while ONNX Runtime reads the
# serialised model; a ResNet-50's table holds about 430 MB, a ViT-L's more)
CHUNK_BYTES = 512 * 2 ** 20


def cpu_model(cpuinfo: str | None = None) -> str:
    """The first processor's model name from /proc/cpuinfo (read here when not given), else what platform says."""
    if cpuinfo is None:
        try:
            cpuinfo = CPUINFO.read_text()
        except OSError:
            cpuinfo = ""
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "model name":
            return value.strip()
    return platform.processor() or platform.machine() or "unknown CPU"


class OnnxRuntimeLayerTimer:
    """Times a layer with ONNX Runtime on the CPU: the median over `runs` timed runs (after `warmup`) of its
    operators' work as ONNX Runtime's profiler records it, without the call's overhead and the layout reorders
    that only a lone layer needs (runtime/ort/kernel_profile.py): the layer's time inside a whole model. A table
    gives it a sweep's entries at once (`time_all`: side by side in one model, table_model.py)."""

    backend = "ort"
    precision = "fp32"

    def __init__(self, *, threads: int = 1, warmup: int = 3, runs: int = 10, spinning: bool = True,
                 flush_denormals: bool | None = None, sweeps: int = CPU_SWEEPS):
        self.threads, self.warmup, self.runs, self.sweeps = threads, warmup, runs, sweeps
        self.device = cpu_model()
        # as the whole models are timed: the Measurement's session options (None: PRUNEFX_KEEP_DENORMALS decides)
        self.spinning = spinning
        self.flush_denormals = timing_flushes_denormals() if flush_denormals is None else flush_denormals
        self.settings = (f"onnxruntime {ort.__version__}, {counted(threads, 'thread')}, operator work without "
                         "layout reorders, convolutions after a lead-in, a table's entries run together"
                         + ("" if spinning else ", not spinning")
                         + ("" if self.flush_denormals else ", subnormals kept")  # a table of each is its own
                         + _sweeps_named(sweeps))
        self._warmed = False

    def __call__(self, layer: TimedLayer) -> float:
        if not self._warmed:  # the process's first ONNX Runtime run, untimed: its thread pools start
            self._median(layer)
            self._warmed = True
        return self._median(layer)

    def time_all(self, entries: Sequence[TimedLayer]) -> list[float]:
        """Each entry's time from runs of one model holding them all (table_model.py): every entry's weights come
        from memory, pushed out of the caches by all the others', as a layer's are in a whole model. Entries with
        more than CHUNK_BYTES of weights between them are timed in several such models."""
        times: list[float] = []
        for chunk in _chunks(list(entries), CHUNK_BYTES):
            model, feed = table_model(chunk)
            data = model.SerializeToString()
            del model  # its weights are in `data`: held twice, not three times, while the session reads them
            with subnormal_mode(self.flush_denormals):
                events = profiled_runs(data, feed, threads=self.threads, spinning=self.spinning,
                                       flush_denormals=self.flush_denormals, runs=self.warmup + self.runs)
            del data
            times += median_kernel_ms_by(events, entry_of, len(chunk), skip=self.warmup)
        return times

    def _median(self, layer: TimedLayer) -> float:
        feed = layer_feed(layer)
        lead_in = layer.kind == "conv2d"  # its lead-in convolution runs first and is not the layer's time
        with subnormal_mode(self.flush_denormals):  # this thread computes too, as the session's workers do
            return median_kernel_ms(layer_model(layer, lead_in=lead_in).SerializeToString(), feed,
                                    threads=self.threads, spinning=self.spinning, flush_denormals=self.flush_denormals,
                                    warmup=self.warmup, runs=self.runs, lead=int(lead_in))


def _sweeps_named(sweeps: int) -> str:
    """What a timer's settings say of its sweeps: an entry's median of several is another entry than one reading."""
    return f", median of {sweeps} sweeps" if sweeps > 1 else ""


def _chunks(entries: list[TimedLayer], limit: int) -> list[list[TimedLayer]]:
    """`entries` in consecutive runs of at most `limit` bytes of weights (at least one entry each)."""
    chunks: list[list[TimedLayer]] = [[]]
    held = 0
    for entry in entries:
        size = weight_bytes(entry)
        if chunks[-1] and held + size > limit:
            chunks.append([])
            held = 0
        chunks[-1].append(entry)
        held += size
    return [chunk for chunk in chunks if chunk]


TimeModule = Callable[[torch.nn.Module, tuple], float]  # (module, inputs) -> ms of one call


class TorchLayerTimer:
    """Times a layer as a torch module with `time_module`; by default eager PyTorch on the CPU (median of
    `runs` timed calls after `warmup`). A backend with its own timing gives `time_module`, `device` (its
    identity) and `precision`; the module and its input are moved to `torch_device` first."""

    backend = "torch"

    def __init__(self, *, time_module: TimeModule | None = None, device: str | None = None,
                 torch_device: str = "cpu", precision: str = "fp32", backend: str = "torch",
                 settings: str | None = None, warmup: int = 3, runs: int = 10, sweeps: int = CPU_SWEEPS):
        if time_module is None and torch.device(torch_device).type != "cpu":
            # the eager timer reads the host's clock, which a GPU's queued kernels do not stop: launches, not work
            raise ValueError(f"TorchLayerTimer times eagerly on the CPU only; on {torch_device} give a time_module "
                             "that waits for the device (the cuda backend's CudaLayerTimer)")
        self.backend, self.precision, self.torch_device = backend, precision, torch_device
        self.time_module = time_module or self._eager
        self.device = device or cpu_model()
        self.warmup, self.runs = warmup, runs
        self.sweeps = sweeps
        self.settings = (settings or f"torch {torch.__version__}, {counted(torch.get_num_threads(), 'thread')}") + \
            _sweeps_named(self.sweeps)

    def __call__(self, layer: TimedLayer) -> float:
        module = LayerModule(layer).to(self.torch_device).eval()
        inputs = (torch.randn(layer.input_shape, generator=torch.Generator().manual_seed(1)).to(self.torch_device),)
        with torch.inference_mode():
            return float(self.time_module(module, inputs))

    def _eager(self, module: torch.nn.Module, inputs: tuple) -> float:
        return measure_latency(lambda: module(*inputs), warmup=self.warmup, runs=self.runs).median_ms
