"""Per-node GPU times of a Program on a CUDA device, as a LayerProfile (`prunefx profile --backend cuda`).

The model runs once, node by node, keeping every node's inputs; then each call_function node is timed alone
on those inputs the way a whole model is (runtime/cuda/graph.sampled): captured in a CUDA graph of enough
iterations that a replay outlasts its launch, many replays per sample, so a row is the node's GPU work and
not Python's dispatch of it. A node that cannot be captured (one that synchronises with the host) is timed
eagerly, calls back to back, and a note names it. Nodes run apart, so the rows add up to more than a
replay of the whole model takes (no overlap between kernels): they say where the time goes.
"""

from __future__ import annotations

import operator
import statistics
from collections.abc import Callable

import torch
import torch.utils._pytree as pytree

from prunefx.runtime.cuda.graph import GpuModel, capture_batch_limit, cudnn_autotuned, sampled
from prunefx.runtime.measure.gpu_latency import WarmUp, warm_until_steady
from prunefx.runtime.tensorrt.layer_profile import LayerProfile, LayerRow


class _RecordingInterpreter(torch.fx.Interpreter):
    """Runs the graph once and keeps, per call_function node that launches GPU work, a zero-argument call of it on
    its inputs."""

    def __init__(self, module: torch.fx.GraphModule):
        super().__init__(module)
        self.calls: dict[str, Callable[[], object]] = {}

    def run_node(self, node: torch.fx.Node):
        if node.op != "call_function":
            return super().run_node(node)
        args, kwargs = self.fetch_args_kwargs_from_env(node)  # before the node runs: an in-place one writes them
        result = super().run_node(node)
        if _launches_work(node.target, (args, kwargs), result):
            self.calls[node.name] = lambda target=node.target, a=args, k=kwargs: target(*a, **k)
        return result


def _launches_work(target, inputs, result) -> bool:
    """Whether a node runs kernels: not one that returns no tensor (a shape read, an assertion), picks an item of
    a tuple, or returns a view of its input (a reshape that had to copy does run one). Captured alone, those make
    an empty CUDA graph (a warning of torch's) and a row of microseconds that is the launch of nothing."""
    outputs = [leaf for leaf in pytree.tree_leaves(result) if isinstance(leaf, torch.Tensor)]
    if target is operator.getitem or not outputs:
        return False
    returns = target._schema.returns if isinstance(target, torch._ops.OpOverload) else ()
    if not any(value.alias_info is not None and not value.alias_info.is_write for value in returns):
        return True
    read = {leaf.untyped_storage().data_ptr() for leaf in pytree.tree_leaves(inputs) if isinstance(leaf, torch.Tensor)}
    return any(output.untyped_storage().data_ptr() not in read for output in outputs)


def node_calls(model: GpuModel) -> dict[str, Callable[[], object]]:
    """Every call_function node of the prepared (uncompiled) model that launches GPU work, callable alone on its
    recorded inputs."""
    interpreter = _RecordingInterpreter(model.module)
    with torch.inference_mode():
        interpreter.run(*model.inputs)
    return interpreter.calls


def profile_nodes(model: GpuModel, *, warmup: int = 3, runs: int = 20) -> tuple[dict[str, float], list[str]]:
    """Median GPU milliseconds per call_function node, and the nodes that had to be timed eagerly. The whole model
    runs first until its times settle: the first nodes timed at idle clocks would read several times slower."""
    warm_until_steady([model.time_once], WarmUp(warmup=1, seconds=model.device.warm_seconds))
    medians, eager = {}, []
    capture = captures_nodes(model)
    for name, call in node_calls(model).items():
        with torch.inference_mode(), cudnn_autotuned():  # eager calls read the setting: warm-up and samples
            for _ in range(max(warmup, 1)):
                call()
            try:
                replay, iterations, calls = sampled(call, model.device, capture=capture)
            except RuntimeError:  # not capturable (a host synchronisation): back-to-back eager calls
                eager.append(name)
                replay, iterations, calls = sampled(call, model.device, capture=False)
            medians[name] = statistics.median(model.device.time(replay, calls) / iterations for _ in range(runs))
        model.device.release()
    return medians, eager


def captures_nodes(model: GpuModel) -> bool:
    """Whether nodes are captured as CUDA graphs: not from the batch at which whole models are not either."""
    return model.batch < capture_batch_limit()


def cuda_profile(model: GpuModel, *, warmup: int = 3, runs: int = 20) -> LayerProfile:
    """One row per timed node: its operator, the precision it ran at and its share of the summed times."""
    medians, eager = profile_nodes(model, warmup=warmup, runs=runs)
    targets = {node.name: node.target for node in model.module.graph.nodes}
    total = sum(medians.values()) or 1.0
    rows = [LayerRow(layer=name, median_ms=ms, share=ms / total, layer_type=_op_name(targets[name]),
                     precision=model.precision, program_nodes=(name,)) for name, ms in medians.items()]
    notes = ["each node replayed alone in its own CUDA graph on its recorded inputs: the rows add up to more "
             "than a replay of the whole model takes"]
    if not captures_nodes(model):
        notes = [f"each node timed alone on its recorded inputs, eagerly, many calls back to back (no CUDA graph "
                 f"at batch >= {capture_batch_limit()}): the rows add up to more than the whole model takes"]
    elif eager:
        notes.append(f"timed eagerly (not capturable): {', '.join(eager)}")
    return LayerProfile(rows=rows, runs=runs, source="cuda", notes=notes)


def _op_name(target) -> str:
    name = getattr(target, "__name__", str(target))
    return name.split(".")[0] if name.endswith(".default") else name
