"""How much linearising one block alone changes a network's outputs (UPDP's block selection).

For each candidate block, a copy of the network has that block's activations replaced by identity
(the abrupt pruned form) and is run on calibration batches next to the original. The damage is the
divergence of the outputs: for classification logits ([N, classes]) the mean KL divergence
KL(softmax(dense) || softmax(linearised)), for any other output the mean squared difference divided
by the mean square of the dense output. Lower is safer to prune; the k lowest are UPDP's choice when a
supernet search is out of budget.

Only activations are removed here: the layer norm -> batch norm replacement needs calibrated statistics
and changes every candidate alike, so it is left out of the ranking.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm import tqdm

from prunefx.graph.depth.blocks import Block
from prunefx.graph.depth.linearization import remove_activation
from prunefx.graph.placement import module_device
from prunefx.graph.progress import shown


def _outputs(module: torch.nn.Module, batches: Sequence[tuple[torch.Tensor, ...]]) -> list[torch.Tensor]:
    with torch.no_grad():
        device = module_device(module)  # batches as given may sit elsewhere (a loader's, on the CPU)
        return [_first_tensor(module(*(x.to(device) for x in batch))).float() for batch in batches]


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


def block_damage(program, blocks: Sequence[Block], batches: Sequence[tuple[torch.Tensor, ...]], *,
                 progress: bool | None = None) -> dict[str, float]:
    """{block name: mean output divergence over `batches` when only that block is linearised}."""
    with program.evaluating():
        reference = _outputs(program.module, batches)
        damage = {}
        for block in tqdm(blocks, desc="scoring blocks", unit="block", disable=not shown(progress)):
            candidate = program.clone()
            nodes = {node.name: node for node in candidate.graph.nodes}
            for name in block.activations:
                remove_activation(candidate.module, nodes[name])
            candidate.module.recompile()
            outputs = _outputs(candidate.module, batches)
            damage[block.name] = sum(divergence(r, o) for r, o in zip(reference, outputs)) / len(batches)
    return damage
