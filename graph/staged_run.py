"""Running a graph on calibration batches a part at a time: each `advance(names)` runs every batch on from
where the previous call stopped up to the last of the nodes `names`, and yields their values per batch;
between calls each batch keeps only the values that later nodes read. A caller that needs many nodes'
values (layer inputs, for their Hessians) takes them a bounded number at a time in one pass over the
graph, where a module tapped per part (activations.tap_nodes) would run the graph again from its inputs.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from prunefx.graph.errors import PrunefxError
from prunefx.graph.in_place_writes import overwritten_later
from prunefx.graph.placement import module_device


class StagedRun:
    """`module` run on `batches` (input tuples) in stages; names must be asked for in graph order."""

    def __init__(self, module: torch.fx.GraphModule, batches: Sequence):
        self.nodes = [node for node in module.graph.nodes if node.op != "output"]
        self.index = {node.name: position for position, node in enumerate(self.nodes)}
        self.last_use = {node: max((self.index.get(user.name, len(self.nodes)) for user in node.users),
                                   default=position) for position, node in enumerate(self.nodes)}
        self.overwritten = overwritten_later(module.graph)
        self.interpreter = torch.fx.Interpreter(module, garbage_collect_values=False)
        self.device = module_device(module)
        self.batches = batches
        self.values: list[dict] = [{} for _ in batches]  # per batch, node -> value, the nodes still read
        self.done = 0  # where the nodes asked for so far end
        self.reached = [0] * len(batches)  # per batch, the nodes run (behind `done` if a caller stopped early)

    def position(self, name: str) -> int:
        """Where node `name` runs in the graph."""
        return self.index[name]

    def advance(self, names: Sequence[str]) -> Iterator[dict[str, torch.Tensor]]:
        """For every batch, {name: value} of the nodes `names`, none of them run before this call."""
        if not names:
            return
        if min(self.index[name] for name in names) < self.done:
            raise PrunefxError("StagedRun: nodes must be asked for in graph order, each once")
        self.done = stop = max(self.index[name] for name in names) + 1
        for index in range(len(self.batches)):
            yield self._run(index, stop, set(names))

    def _run(self, index: int, stop: int, names: set[str]) -> dict[str, torch.Tensor]:
        """Run batch `index` on to node `stop`, dropping each value once nothing later reads it."""
        interpreter, found, values = self.interpreter, {}, self.values[index]
        interpreter.env = values
        interpreter.args_iter = iter([t.to(self.device) for t in self.batches[index]])
        start, self.reached[index] = self.reached[index], stop
        with torch.no_grad():
            for position in range(start, stop):
                node = self.nodes[position]
                values[node] = interpreter.run_node(node)
                if node.name in names:  # as computed: a later in-place operator may write into it before the yield
                    found[node.name] = values[node].clone() if node in self.overwritten else values[node]
                for read in node.all_input_nodes:
                    if self.last_use[read] <= position:
                        values.pop(read, None)
                if self.last_use[node] <= position:
                    values.pop(node, None)
        return found
