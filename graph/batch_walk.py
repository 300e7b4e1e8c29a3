"""Run a graph over every calibration batch at once, node by node in graph order, so that a caller can
change the module's tensors just before chosen nodes run and every later node sees the change.

Batch-norm recalibration needs this: a batch norm's exact statistics over all batches must be set before
the nodes after it run, so batch by batch it costs one pass over the data per level of batch norms (49
forward passes for a ResNet-50), where this walk costs one. The price is memory: the live tensors of
every batch are held at once. `live_bytes` estimates that from the captured shapes, so that a caller can
keep the batch-by-batch passes where it would not fit.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence

import torch

from prunefx.graph.placement import module_device


def _needed(module: torch.fx.GraphModule, targets: Sequence[torch.fx.Node]) -> list[torch.fx.Node]:
    """The targets and every node they depend on, in graph order."""
    needed: set[torch.fx.Node] = set()
    stack = list(targets)
    while stack:
        node = stack.pop()
        if node not in needed:
            needed.add(node)
            stack.extend(node.all_input_nodes)
    return [node for node in module.graph.nodes if node in needed]


def _frees(order: list[torch.fx.Node]) -> dict[torch.fx.Node, list[torch.fx.Node]]:
    """node -> the values that can be dropped once it ran (their last reader among `order`, or itself
    when nothing in `order` reads it)."""
    last_reader: dict[torch.fx.Node, torch.fx.Node] = {node: node for node in order}
    for node in order:
        for source in node.all_input_nodes:
            last_reader[source] = node
    frees: dict[torch.fx.Node, list[torch.fx.Node]] = defaultdict(list)
    for value, reader in last_reader.items():
        frees[reader].append(value)
    return frees


def _bytes(node: torch.fx.Node) -> int:
    value = node.meta.get("val")
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, (tuple, list)):
        return sum(v.numel() * v.element_size() for v in value if isinstance(v, torch.Tensor))
    return 0


def live_bytes(module: torch.fx.GraphModule, targets: Sequence[torch.fx.Node]) -> int:
    """The most bytes of activations that `walk` holds at once for ONE batch of the captured shapes
    (module tensors read by get_attr are not counted: they are shared by the batches)."""
    order = _needed(module, targets)
    frees = _frees(order)
    live, peak = 0, 0
    for node in order:
        if node.op != "get_attr":
            live += _bytes(node)
        peak = max(peak, live)
        live -= sum(_bytes(value) for value in frees[node] if value.op != "get_attr")
    return peak


def walk(module: torch.fx.GraphModule, batches: Sequence[Sequence[torch.Tensor]], targets: Sequence[torch.fx.Node],
         before: Callable[[torch.fx.Node, list[torch.Tensor]], None]) -> None:
    """Run the nodes `targets` depend on (and the targets), in graph order, on every batch (input tuples,
    moved to the module's device), without gradients. Just before a target runs, `before(target, values)`
    is called with its first argument's value on every batch; the module tensors the target reads are
    fetched again after it, so that what `before` wrote is what the target and every later node use."""
    order = _needed(module, targets)
    frees, target_set = _frees(order), set(targets)
    device = module_device(module)
    runs = [torch.fx.Interpreter(module, garbage_collect_values=False) for _ in batches]
    for run, batch in zip(runs, batches):
        run.args_iter = iter([t.to(device) for t in batch])
    with torch.no_grad():
        for node in order:
            if node in target_set:
                before(node, [run.env[node.args[0]] for run in runs])  # type: ignore[index]
                for source in node.all_input_nodes:
                    if source.op == "get_attr":
                        for run in runs:
                            run.env[source] = run.run_node(source)
            for run in runs:
                run.env[node] = run.run_node(node)
            for value in frees[node]:
                for run in runs:
                    del run.env[value]
