"""Latency-table entries on the cuda backend: each layer at each width a plain module (runtime/tables/layer_models.
LayerModule) placed on the GPU and timed as runtime/cuda/graph.GpuModel times a whole model (a CUDA graph of
enough iterations to hide its launch, many replays per sample), with no export and no capture of a Program.

A table of a few hundred entries then costs a capture and a few hundred replays each: seconds on a GPU. The
GPU is warmed up before the first entry (its clocks then stay up as entries follow each other), and
each entry's memory is handed back once it is timed. An input is drawn once per shape and kept as placed on
the GPU: a layer's grid times each input width against every output width, and drawing a batch-32 input on
the CPU costs more than timing an entry. After other work left the GPU idle (a joint search times the merged
network's layers after its depth search) it is warmed up again. Layers run eagerly (never
compiled, whatever --compile says): the table chooses channels, and whole-model measurements, compiled where
asked, confirm the speed-up.
"""

from __future__ import annotations

import time
from collections import OrderedDict

import torch

from prunefx.graph.channels.timed_layers import ATTENTION_KINDS, TimedLayer
from prunefx.runtime.cuda.graph import CudaDevice, GpuModel, capture_batch_limit
from prunefx.runtime.measure.gpu_latency import measure_gpu_latency
from prunefx.runtime.tables.layer_models import LayerModule

RUNS, WARMUP = 20, 3  # samples per entry, each already many replays long
INPUTS_KEPT = 4        # placed inputs kept, the most recently used shapes
IDLE_SECONDS = 1.0     # a GPU left idle longer than this between entries may have lowered its clocks


class CudaLayerTimer:
    """Times one layer on `gpu` at `precision`, in ms per call (the median of RUNS samples)."""

    backend = "cuda"

    def __init__(self, gpu: CudaDevice, precision: str):
        self.gpu, self.precision = gpu, precision
        self.device = str(gpu.describe().get("gpu"))
        self.settings = (f"PyTorch on CUDA, torch {torch.__version__}, cuDNN autotuned, channels_last convolutions, "
                         f"CUDA-graph samples below batch {capture_batch_limit()}, eager calls from it, eager kernels")
        self.last_timed: float | None = None  # time.monotonic() when the last entry was timed
        self.inputs: OrderedDict[tuple[int, ...], torch.Tensor] = OrderedDict()  # by shape, as placed

    def __call__(self, layer: TimedLayer) -> float:
        shape = probe_shape(layer)
        model = GpuModel.of_module(LayerModule(layer).eval(), (self._input(shape),), precision=self.precision,
                                   device=self.gpu)
        self.inputs[shape] = model.inputs[0]  # placing it again is then a no-op
        idle = self.last_timed is None or time.monotonic() - self.last_timed > IDLE_SECONDS
        ms = measure_gpu_latency(model.time_once, warmup=WARMUP, runs=RUNS,
                                 warm_seconds=self.gpu.warm_seconds if idle else 0.0).median_ms
        self.last_timed = time.monotonic()
        del model
        self.gpu.release()
        return ms

    def _input(self, shape: tuple[int, ...]) -> torch.Tensor:
        """The input of `shape`: the one kept, else a new one (the least recently used goes)."""
        if shape in self.inputs:
            self.inputs.move_to_end(shape)
            return self.inputs[shape]
        while len(self.inputs) >= INPUTS_KEPT:
            self.inputs.popitem(last=False)
        return torch.randn(shape, generator=torch.Generator().manual_seed(1))


def probe_shape(layer: TimedLayer) -> tuple[int, ...]:
    """The shape of the input a layer is timed on. A linear layer's or layer norm's 4-D input (ConvNeXt's
    N x H x W x C) as N x HW x C: the same rows, and left contiguous as in the model (the permuted output of a
    channels_last convolution), where the device would make a 4-D input channels_last and the probe would
    time a copy of it too; an attention's q likewise, 3-D (fused attention kernels read a contiguous head dim)."""
    shape = tuple(layer.input_shape)
    if layer.kind in ("linear", "layer_norm") and len(shape) == 4:
        return (shape[0], shape[1] * shape[2], shape[3])
    if layer.kind in ATTENTION_KINDS:  # N*heads x tokens x dim, seen 4-D by the attention as a view
        return (shape[0] * shape[1], shape[2], shape[3])
    return shape
