"""Layer timers by backend name: a per-layer latency table (runtime/tables/table.py) on any registered
backend (runtime/backends/).

`layer_timer(name, settings)`:
- `ort`: OnnxRuntimeLayerTimer (runtime/tables/timers.py), a one-layer ONNX model per layer and width at
  `settings.threads`: no capture and no export, so a table of a few hundred entries takes seconds;
- a backend with its own `layer_timer(settings)` (`cuda`: runtime/cuda/layer_timer.py, plain layer modules
  replayed as CUDA graphs, no export or capture per entry): that timer;
- any other backend (`trt`, ...): BackendLayerTimer, the layer captured as a one-layer Program at its
  input shape and timed by the backend's own `time_program`, the way `bench` times a whole model. Its
  device identity is the GPU the backend describes, else this CPU's model; its settings name the backend,
  torch and compile.

Every timer but cuda's (whose samples are each many replays of a CUDA graph: runtime/cuda/layer_timer.py) takes
at most ENTRY_WARMUP warm-up and ENTRY_RUNS timed runs an entry, whatever a whole-model measurement would use:
a table has hundreds of entries, and whole-model measurements confirm what it chose.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from prunefx.graph import capture
from prunefx.graph.channels.timed_layers import TimedLayer
from prunefx.runtime import backends
from prunefx.runtime.backends.base import Backend, Settings
from prunefx.runtime.tables.layer_models import LayerModule
from prunefx.runtime.tables.table import LayerTimer
from prunefx.runtime.tables.timers import OnnxRuntimeLayerTimer, cpu_model

ENTRY_WARMUP, ENTRY_RUNS = 3, 10  # an entry's most warm-up and timed runs, on every backend but cuda


class BackendLayerTimer:
    """Times one layer as a Program with `backend.time_program` (its median, in ms)."""

    def __init__(self, backend: Backend, settings: Settings):
        self.measuring, self.options = backend, per_entry(settings)
        self.precision = backend.require(settings, purpose="bench")
        self.backend = backend.name
        self.device = _device_name(backend)
        parts = (backend.label, f"torch {torch.__version__}", backend.software(settings), f"compile={settings.compile}")
        self.settings = ", ".join(part for part in parts if part)  # with TensorRT's version: an upgrade times again

    def __call__(self, layer: TimedLayer) -> float:
        example = torch.randn(layer.input_shape, generator=torch.Generator().manual_seed(1))
        program = capture(LayerModule(layer).eval(), example, name=f"{layer.kind} layer").eval()
        options = replace(self.options, batch=int(layer.input_shape[0]), precision=self.precision)
        return float(self.measuring.time_program(program, options)["median_ms"])


def layer_timer(name: str, settings: Settings) -> LayerTimer:
    """The layer timer of the backend called `name` (a one-line MeasurementError for an unknown one)."""
    backend = backends.get(name)
    if backend.name == "ort":
        backend.require(settings, purpose="bench")
        entry = per_entry(settings)
        return OnnxRuntimeLayerTimer(threads=settings.threads, warmup=entry.warmup, runs=entry.runs,
                                     spinning=settings.spinning, flush_denormals=settings.flush_denormals)
    own = getattr(backend, "layer_timer", None)  # a backend that times plain layer modules itself (cuda)
    if callable(own):
        backend.require(settings, purpose="bench")
        return own(settings)
    return BackendLayerTimer(backend, settings)


def per_entry(settings: Settings) -> Settings:
    """`settings` with at most ENTRY_WARMUP warm-up and ENTRY_RUNS timed runs."""
    return replace(settings, warmup=min(settings.warmup, ENTRY_WARMUP), runs=min(settings.runs, ENTRY_RUNS))


def _device_name(backend: Backend) -> str:
    """The GPU a backend with a device describes, or the GPU torch sees for one timed on a GPU (the TensorRT
    family), else this CPU's model string: a table's cache must not hand one GPU's times to another."""
    describe = getattr(getattr(backend, "device", None), "describe", None)
    described = describe() if callable(describe) else {}
    if not described.get("gpu") and backend.gpu_timed and torch.cuda.is_available():
        described = {"gpu": torch.cuda.get_device_name()}
    return str(described.get("gpu") or cpu_model())
