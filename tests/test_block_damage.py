"""UPDP's block damage (graph/depth/block_damage.py): the divergence of a linearised network's outputs from
the dense network's. The oracles: KL divergence computed by torch.nn.functional.kl_div, and the rewritten
network run whole."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from prunefx.graph import capture
from prunefx.graph.depth.block_damage import block_damage, divergence
from prunefx.graph.depth.blocks import find_blocks
from prunefx.graph.depth.branch_drop import drop_branches, drop_damage, droppable_blocks
from prunefx.graph.depth.linearization import remove_activation
from prunefx.models import build_model


def test_logits_diverge_by_their_kl_divergence_and_never_below_zero():
    torch.manual_seed(0)
    dense, other = torch.randn(8, 10), torch.randn(8, 10)
    expected = torch.nn.functional.kl_div(torch.log_softmax(other.double(), 1), torch.log_softmax(dense.double(), 1),
                                          reduction="batchmean", log_target=True)
    # to rounding: float64 sums split over another number of threads differ in the last bit
    assert divergence(dense, other) == pytest.approx(float(expected), rel=1e-12) and float(expected) > 0
    # logits one float32 step apart in one place: their KL's rounding comes out below zero about a quarter
    # of the time; a damage is never negative
    for seed in range(20):
        logits = torch.randn(2, 10, generator=torch.Generator().manual_seed(seed))
        nudged = logits.clone()
        nudged[0, seed % 10] = torch.nextafter(nudged[0, seed % 10], torch.tensor(10.0))
        assert divergence(logits, nudged) >= 0.0
    assert divergence(dense, dense) == 0.0


def _rewritten_damage(program, rewrite, batches) -> float:
    """The oracle: the rewritten copy run whole on every batch beside the dense program, as UPDP states it."""
    with program.evaluating(), torch.no_grad():
        candidate = rewrite(program)
        total = 0.0
        for batch in batches:
            reference, output = program.module(*batch), candidate.module(*batch)
            total += divergence(reference.float(), output.float())
    return total / len(batches)


def _linearised(block):
    def rewrite(program):
        candidate = program.clone()
        nodes = {node.name: node for node in candidate.graph.nodes}
        for name in block.activations:
            remove_activation(candidate.module, nodes[name])
        candidate.module.recompile()
        return candidate
    return rewrite


@pytest.mark.parametrize("reference", ["prunefx:mobilenetv2_small", "prunefx:resnet20"])
def test_each_block_run_on_from_the_dense_run_scores_as_the_whole_rewritten_network(reference):
    """Linearising or dropping one block, scored by running on from the dense run's values at the block, gives
    the divergence of the rewritten network run whole from its input (graph/depth/linearization.py's
    remove_activation, branch_drop.py's drop_branches): the same operators on the same values."""
    torch.manual_seed(0)
    program = capture(build_model(reference).module.eval(), torch.randn(2, 1, 28, 28)).eval()
    batches = [(torch.randn(2, 1, 28, 28),) for _ in range(3)]
    blocks = [block for block in find_blocks(program.module) if block.activations]
    linearised = block_damage(program, blocks, batches, progress=False)
    assert len(linearised) == len(blocks) >= 3
    for block in blocks:
        assert linearised[block.name] == pytest.approx(_rewritten_damage(program, _linearised(block), batches),
                                                       rel=1e-9, abs=1e-15), block.name
    droppable = droppable_blocks(program)
    dropped = drop_damage(program, droppable, batches, progress=False)
    for block in droppable:
        expected = _rewritten_damage(program, lambda p, b=block: drop_branches(p, [b]), batches)
        assert dropped[block.name] == pytest.approx(expected, rel=1e-9, abs=1e-15), block.name
    assert droppable or reference != "prunefx:resnet20"  # a ResNet's identity shortcuts drop
    unchanged = dataclasses.replace(blocks[0], name="nothing removed", activations=[])
    assert block_damage(program, [unchanged], batches, progress=False) == {"nothing removed": 0.0}
