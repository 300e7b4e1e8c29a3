"""Per-node GPU times of a Program run eagerly on a CUDA device, as a LayerProfile (`prunefx profile
--backend cuda`).

Each call_function node runs between two CUDA events (CudaDevice.time), node by node, over `runs` passes; a
row is a node's median. The events wait for each node, so the rows add up to more than a graph replay
takes (no overlap, launch gaps included): they say where the time goes, not what the model costs.
"""

from __future__ import annotations

import statistics

import torch

from prunefx.runtime.cuda_graph import GpuModel
from prunefx.runtime.tensorrt_profile import LayerProfile, LayerRow


class _TimedInterpreter(torch.fx.Interpreter):
    def __init__(self, module: torch.fx.GraphModule, device, times: dict[str, list[float]]):
        super().__init__(module)
        self.device, self.times = device, times

    def run_node(self, node: torch.fx.Node):
        if node.op != "call_function":
            return super().run_node(node)
        result = []
        self.times.setdefault(node.name, []).append(self.device.time(lambda: result.append(super(
            _TimedInterpreter, self).run_node(node))))
        return result[0]


def profile_nodes(model: GpuModel, *, warmup: int = 3, runs: int = 20) -> dict[str, float]:
    """Median GPU milliseconds per call_function node of the prepared (uncompiled) model."""
    times: dict[str, list[float]] = {}
    with torch.inference_mode():
        for _ in range(warmup):
            _TimedInterpreter(model.module, model.device, {}).run(*model.inputs)
        for _ in range(runs):
            _TimedInterpreter(model.module, model.device, times).run(*model.inputs)
    return {name: statistics.median(values) for name, values in times.items()}


def cuda_profile(model: GpuModel, *, warmup: int = 3, runs: int = 20) -> LayerProfile:
    """One row per timed node: its operator, the precision it ran at and its share of the summed times."""
    medians = profile_nodes(model, warmup=warmup, runs=runs)
    targets = {node.name: node.target for node in model.module.graph.nodes}
    total = sum(medians.values()) or 1.0
    rows = [LayerRow(layer=name, median_ms=ms, share=ms / total, layer_type=_op_name(targets[name]),
                     precision=model.precision, program_nodes=(name,)) for name, ms in medians.items()]
    notes = ["per-node CUDA events, run eagerly one node at a time: the rows add up to more than a CUDA-graph "
             "replay of the model takes"]
    return LayerProfile(rows=rows, runs=runs, source="cuda", notes=notes)


def _op_name(target) -> str:
    name = getattr(target, "__name__", str(target))
    return name.split(".")[0] if name.endswith(".default") else name
