"""FactorSlices.removed_with (what goes with one grid factor class) and removal.expand_mask (which unites them)
against the fixpoint of sweeping every grid until nothing changes, on models with heads, head dims, windows and
nested grids."""

import numpy as np
import pytest
import torch
import torch.nn as nn

from prunefx.graph.capture import capture
from prunefx.graph.channels.analysis import analyse_channels
from prunefx.graph.channels.factor_slices import FactorSlices
from prunefx.graph.channels.removal import expand_mask


class TwoAttentionBlocks(nn.Module):
    def __init__(self, width=32, heads=4):
        super().__init__()
        self.heads = heads
        self.qkv = nn.ModuleList(nn.Linear(width, 3 * width) for _ in range(2))
        self.proj = nn.ModuleList(nn.Linear(width, width) for _ in range(2))

    def forward(self, x):
        batch, tokens, width = x.shape
        for qkv, proj in zip(self.qkv, self.proj):
            q, k, v = qkv(x).reshape(batch, tokens, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
            attention = (q @ k.transpose(-2, -1)).softmax(-1)
            x = x + proj((attention @ v).transpose(1, 2).reshape(batch, tokens, width))
        return x


def _models():
    yield "attention", TwoAttentionBlocks().eval(), torch.randn(2, 5, 32)
    timm = pytest.importorskip("timm")
    yield "maxvit", timm.create_model("maxvit_nano_rw_256", pretrained=False).eval(), torch.randn(1, 3, 256, 256)


def swept(analysis, mask: np.ndarray) -> np.ndarray:
    """The oracle: every grid swept, each axis's removed factor indices taking their slice's classes along,
    until a sweep changes nothing."""
    mask, classes, changed = mask.copy(), analysis.classes, True
    while changed:
        changed = False
        for grid in analysis.space.grids:
            for axis, factor in enumerate(grid.factors):
                inside = classes[np.compress(mask[classes[factor]], grid.elements, axis=axis)]
                if not mask[inside].all():
                    mask[inside], changed = True, True
    return mask


@pytest.fixture(scope="module", params=list(_models()), ids=lambda case: case[0])
def analysis(request):
    _, module, example = request.param
    return analyse_channels(capture(module, example).module)


def test_what_goes_with_one_factor_class_is_the_sweeps_fixpoint(analysis):
    slices = FactorSlices(analysis)
    factor_classes = sorted(slices.slices)
    assert factor_classes, "the model should have grid factors"
    for cls in factor_classes:
        mask = np.zeros(int(analysis.classes.max()) + 1, dtype=bool)
        mask[cls] = True
        np.testing.assert_array_equal(slices.removed_with(cls), np.flatnonzero(swept(analysis, mask)))


@pytest.mark.parametrize("share", [0.002, 0.02, 0.2])
def test_expand_mask_reaches_the_sweeps_fixpoint_on_any_mask(analysis, share):
    rng, grown = np.random.default_rng(0), 0
    for _ in range(5):
        mask = rng.random(int(analysis.classes.max()) + 1) < share
        expanded = expand_mask(analysis, mask)
        np.testing.assert_array_equal(expanded, swept(analysis, mask))
        grown += int(expanded.sum() > mask.sum())
    assert grown or share < 0.2  # at the largest share, heads' slices did go along: the case is not vacuous
