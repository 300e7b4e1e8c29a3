"""How much linearising one block alone changes a network's outputs (UPDP's block selection).

For each candidate block, the network with that block's activations replaced by identity (the abrupt pruned
form) is run on calibration batches next to the original. The damage is the divergence of the outputs: for
classification logits ([N, classes]) the mean KL divergence KL(softmax(dense) || softmax(linearised)), for any
other output the mean squared difference divided by the mean square of the dense output. Lower is safer to
prune; the k lowest are UPDP's choice when a supernet search is out of budget.

A candidate differs from the dense network only from its block on: every node before the block's first change
computes what it computes in the dense run. So each batch runs the dense graph once, and at each block's first
change the candidate runs on from the values the dense run holds there (`damages`), not from the input: a
block in the middle of the network costs half a forward pass, and no copy of the network is made.

Only activations are removed here: the layer norm -> batch norm replacement needs calibrated statistics
and changes every candidate alike, so it is left out of the ranking.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from prunefx.graph.depth.blocks import Block
from prunefx.graph.placement import module_device
from prunefx.graph.progress import progress_bar

# a node -> the node whose value it takes instead of computing its own (an activation -> its input)
Substitutions = Mapping[torch.fx.Node, torch.fx.Node]


def _first_tensor(output) -> torch.Tensor:
    while isinstance(output, (tuple, list)):
        output = output[0]
    if isinstance(output, dict):
        return _first_tensor(next(iter(output.values())))
    return output


def divergence(reference: torch.Tensor, other: torch.Tensor) -> float:
    """KL(softmax(reference) || softmax(other)) for [N, C] logits, else relative mean squared error."""
    if reference.dim() == 2:
        log_p = torch.log_softmax(reference.double(), dim=1)
        log_q = torch.log_softmax(other.double(), dim=1)
        # a KL divergence is never negative: where the two agree, rounding leaves about -1e-16, reported as 0
        return max(0.0, float((log_p.exp() * (log_p - log_q)).sum(dim=1).mean()))
    scale = reference.double().square().mean().clamp(min=1e-12)
    return float((reference.double() - other.double()).square().mean() / scale)


class _Substituted(torch.fx.Interpreter):
    """The graph run with some nodes taking another node's value; values freed after their last use."""

    def __init__(self, module: torch.fx.GraphModule, substitutions: Substitutions):
        super().__init__(module)
        self.substitutions = substitutions

    def run_node(self, node: torch.fx.Node):
        source = self.substitutions.get(node)
        return self.env[source] if source is not None else super().run_node(node)


class _DenseRun(torch.fx.Interpreter):
    """The dense graph run, each candidate run on from the values live where its first change is, as the run
    reaches it. `outputs[name]` is the candidate's output, once the run is done."""

    _NOT_LIVE = object()  # what a node read by nothing after the candidate's start holds: it is never read

    def __init__(self, module: torch.fx.GraphModule, candidates: Mapping[str, Substitutions], args: tuple):
        super().__init__(module)
        self.args, self.outputs = args, {}
        self.nodes = list(module.graph.nodes)
        position = {node: index for index, node in enumerate(self.nodes)}
        self.starting: dict[torch.fx.Node, list[str]] = {}
        for name, substitutions in candidates.items():
            self.starting.setdefault(min(substitutions, key=position.__getitem__), []).append(name)
        self.candidates, self.position = candidates, position

    def run_node(self, node: torch.fx.Node):
        for name in self.starting.get(node, ()):
            before = {done: self.env.get(done, self._NOT_LIVE) for done in self.nodes[:self.position[node]]}
            run = _Substituted(self.module, self.candidates[name])
            self.outputs[name] = _first_tensor(run.run(*self.args, initial_env=before)).float()
        return super().run_node(node)


def damages(program, candidates: Mapping[str, Substitutions], batches: Sequence[tuple[torch.Tensor, ...]], *,
            desc: str, progress: bool | None = None) -> dict[str, float]:
    """{candidate name: mean output divergence over `batches` of the network with the candidate's substitutions},
    each run on from the dense run's values at its first substituted node (see the module docstring)."""
    damage = dict.fromkeys(candidates, 0.0)  # a candidate that substitutes nothing is the dense network
    changed = {name: substitutions for name, substitutions in candidates.items() if substitutions}
    with (program.evaluating(), torch.no_grad(),
          progress_bar(desc, len(batches) * len(changed), unit="block", progress=progress if changed else False) as bar):
        device = module_device(program.module)  # batches as given may sit elsewhere (a loader's, on the CPU)
        for batch in batches:
            args = tuple(x.to(device) for x in batch)
            dense = _DenseRun(program.module, changed, args)
            reference = _first_tensor(dense.run(*args)).float()
            for name, output in dense.outputs.items():
                damage[name] += divergence(reference, output) / len(batches)
                bar.update()
    return damage


def block_damage(program, blocks: Sequence[Block], batches: Sequence[tuple[torch.Tensor, ...]], *,
                 progress: bool | None = None) -> dict[str, float]:
    """{block name: mean output divergence over `batches` when only that block is linearised}."""
    nodes = {node.name: node for node in program.graph.nodes}
    # act(x) -> x, as linearisation.remove_activation rewrites it
    candidates = {block.name: {nodes[name]: nodes[name].args[0] for name in block.activations} for block in blocks}
    return damages(program, candidates, batches, desc="scoring blocks", progress=progress)
