"""A latency table's entries timed together (runtime/tables/table_model.py, OnnxRuntimeLayerTimer.time_all): the one
model computes each entry as its own one-layer model does, each entry's time is the sum of its own nodes' kernel times
(its lead-in and the layout reorders left out), and the table builder hands a sweep's entries to the timer at once."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest
import torch

from prunefx.graph.channels.timed_layers import TimedLayer
from prunefx.runtime.ort.kernel_profile import median_kernel_ms_by
from prunefx.runtime.tables.layer_models import LayerModule, weight_bytes
from prunefx.runtime.tables.table import build_latency_table
from prunefx.runtime.tables.table_model import entry_of, table_model
from prunefx.runtime.tables.timers import OnnxRuntimeLayerTimer, _chunks

ENTRIES = [
    TimedLayer("c", "conv2d", (1, 8, 9, 9), 6, True, (3, 3), (2, 2), (0, 1, 2, 1), (1, 1), 2, epilogue=("relu",)),
    TimedLayer("l", "linear", (1, 5, 12), 7, True, epilogue=("gelu",)),
    TimedLayer("n", "layer_norm", (1, 3, 3, 12), 12, True),
    TimedLayer("a", "attention", (1, 3, 5, 8), 8, False, score_terms=1),
    TimedLayer("c", "conv2d", (1, 8, 9, 9), 6, True, (3, 3), (2, 2), (0, 1, 2, 1), (1, 1), 2, epilogue=("relu",)),
]


def test_the_table_model_computes_every_entry_as_its_own_model_does():
    """Oracle: each entry's torch module on the entry's input (negated by the lead-in, but for a convolution, whose
    lead-in is a depthwise 1x1 of weight one)."""
    model, feed = table_model(ENTRIES)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    outputs = dict(zip([output.name for output in session.get_outputs()], session.run(None, feed)))
    assert len(outputs) == len(ENTRIES)
    for index, layer in enumerate(ENTRIES):
        source = feed[f"e{index}_x" if layer.kind == "conv2d" else f"e{index}_source"]
        x = torch.from_numpy(source if layer.kind == "conv2d" else -source)
        np.testing.assert_allclose(outputs[f"e{index}_y"], LayerModule(layer)(x).detach().numpy(), rtol=1e-4,
                                   atol=1e-5)


@pytest.mark.parametrize("node, entry", [("e3_n1", 3), ("e12_t_nchwc", 12), ("e0_n2/MatMulAddFusion", 0),
                                         ("e4_lead", None), ("e4_lead0_nchwc", None), ("ReorderOutput", None),
                                         ("e_x", None), ("eleven_n1", None)])
def test_each_node_belongs_to_the_entry_its_name_says(node, entry):
    assert entry_of(node) == entry


def _kernel(run_start: int, at: int, node: str, op: str, microseconds: int) -> dict:
    return {"cat": "Node", "name": f"{node}_kernel_time", "ts": run_start + at, "dur": microseconds,
            "args": {"op_name": op}}


def test_an_entry_s_time_is_the_median_over_runs_of_its_own_kernels():
    """Three runs by hand: entry 0 has two nodes (1 + 2, 1 + 4, 1 + 2 ms), entry 1 one (5, 3, 4 ms); lead-ins and
    reorders are not counted, the first run is skipped as warm-up."""
    events = []
    for run, (a, b, c) in enumerate([(9, 9, 9), (1, 2, 5), (1, 4, 3), (1, 2, 4)]):
        start = 100_000 * run
        events.append({"cat": "Session", "name": "model_run", "ts": start, "dur": 90_000})
        events += [_kernel(start, 10, "e0_lead", "Neg", 7000), _kernel(start, 20, "e0_n1", "Conv", a * 1000),
                   _kernel(start, 30, "reorder", "ReorderOutput", 7000), _kernel(start, 40, "e0_n2", "Relu", b * 1000),
                   _kernel(start, 50, "e1_n0", "Gemm", c * 1000)]
    assert median_kernel_ms_by(events, entry_of, 2, skip=1) == pytest.approx([3.0, 4.0])


def test_entries_are_cut_into_models_of_at_most_so_many_bytes_of_weights():
    linear = TimedLayer("l", "linear", (1, 4), 100, False)  # 400 weights: 1600 bytes
    assert weight_bytes(linear) == 4 * sum(p.numel() for p in LayerModule(linear).parameters())
    assert weight_bytes(ENTRIES[0]) == 4 * sum(p.numel() for p in LayerModule(ENTRIES[0]).parameters() if p.dim() > 1)
    assert [len(chunk) for chunk in _chunks([linear] * 5, 3200)] == [2, 2, 1]
    assert [len(chunk) for chunk in _chunks([linear] * 2, 100)] == [1, 1]  # an entry larger than the limit: alone


def test_the_onnx_runtime_timer_times_entries_together_each_with_its_own_time():
    timer = OnnxRuntimeLayerTimer(threads=1, warmup=1, runs=3)
    times = timer.time_all(ENTRIES)
    assert len(times) == len(ENTRIES) and all(ms > 0 for ms in times)
    assert "run together" in timer.settings  # a table of lone layers' times is another table


class TogetherTimer:
    """Times a sweep's entries in one call: 1 ms per input channel plus the sweep's number; records each call."""

    backend, device, precision, settings, sweeps = "together", "none", "fp32", "fake", 3

    def __init__(self):
        self.calls = []

    def __call__(self, layer):
        raise AssertionError("a timer that times entries together is not asked for one")

    def time_all(self, entries):
        self.calls.append([entry.geometry() for entry in entries])
        return [entry.in_channels + len(self.calls) for entry in entries]


def test_the_table_hands_each_sweep_s_entries_to_the_timer_at_once(tmp_path):
    layers = [TimedLayer("a", "linear", (1, 32), 16, True), TimedLayer("b", "linear", (1, 32), 16, True),
              TimedLayer("c", "layer_norm", (1, 32), 32, True)]
    timer = TogetherTimer()
    table = build_latency_table(layers, timer, multiple=8, cache_dir=tmp_path)
    assert len(timer.calls) == 3 and timer.calls[0] == timer.calls[1] == timer.calls[2]
    assert len(timer.calls[0]) == len(set(timer.calls[0])) == table.measured  # "b" is "a"'s geometry: once
    assert table(layers[1], 16, 8) == pytest.approx(16 + 2)  # the median of the three sweeps' readings
    assert table(layers[2], 24, 24) == pytest.approx(24 + 2)


MEMORY_PROBE = """
import resource, sys
from prunefx.graph.channels.timed_layers import TimedLayer
from prunefx.runtime.tables.layer_models import weight_bytes
from prunefx.runtime.tables.table_model import table_model
entries = [TimedLayer(f"l{i}", "linear", (1, 8, 1024), 4096, True) for i in range(12)]
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
model, feed = table_model(entries)
grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
print(grown / sum(weight_bytes(entry) for entry in entries))
"""


def test_the_table_model_holds_its_entries_weights_about_once_while_it_is_built():
    """A ViT-L's table holds 512 MB of weights a model: each entry is copied into the table as it is made and dropped,
    not held in its own model until the table copies them all (three times the weights at the peak). Its own process:
    the peak resident set is the process's."""
    found = subprocess.run([sys.executable, "-c", MEMORY_PROBE], capture_output=True, text=True, check=True)
    assert float(found.stdout.strip()) < 1.8
