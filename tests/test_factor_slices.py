"""FactorSlices.removed_with (what goes with one grid factor class) against removal.expand_mask, the fixpoint
over every grid, on models with heads, head dims, windows and nested grids."""

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


@pytest.mark.parametrize("case", list(_models()), ids=lambda case: case[0])
def test_same_classes_as_expand_mask(case):
    _, module, example = case
    analysis = analyse_channels(capture(module, example).module)
    slices = FactorSlices(analysis)
    factor_classes = sorted(slices.slices)
    assert factor_classes, "the model should have grid factors"
    for cls in factor_classes:
        mask = np.zeros(int(analysis.classes.max()) + 1, dtype=bool)
        mask[cls] = True
        np.testing.assert_array_equal(slices.removed_with(cls), np.flatnonzero(expand_mask(analysis, mask)))
