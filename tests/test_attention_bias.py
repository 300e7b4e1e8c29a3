"""Attention with an additive per-head bias (relative-position tables, as in BEiT, Swin-style and hybrid
conv-attention models): the bias passed as scaled_dot_product_attention's attn_mask shrinks with the
heads it is added to. Before, a head removed from q/k/v left its bias plane behind and the pruned model
failed after removal (`Attempting to broadcast a dimension of length 12`)."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

from prunefx.graph import capture
from prunefx.graph.channels.groups import find_channel_groups
from prunefx.passes import remove_channels
from prunefx.runtime import check_parity, export_onnx


class RelativeBiasAttention(nn.Module):
    def __init__(self, dim=32, heads=4, window=4):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.table = nn.Parameter(torch.randn((2 * window - 1) ** 2, heads))
        coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
        relative = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + window - 1
        self.register_buffer("index", relative[..., 0] * (2 * window - 1) + relative[..., 1], persistent=False)

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        bias = self.table[self.index.view(-1)].view(n, n, -1).permute(2, 0, 1).unsqueeze(0)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


def test_heads_take_their_bias_planes_along_exactly(removal_is_exact):
    torch.manual_seed(0)
    model, x = RelativeBiasAttention().eval(), torch.randn(2, 16, 32)
    combing = find_channel_groups(capture(model, x).eval().module)
    heads = next(g for g in combing.groups if g.size == 4)
    assert heads.exact and ("table", 1) in heads.members
    for position in (0, -1):
        program = capture(model, x).eval()
        combing = find_channel_groups(program.module)
        group = next(g for g in combing.groups if g.size == 4)
        removal_is_exact(program, combing, {int(group.classes[position])}, x)
        assert program.module.table.shape[1] == 3


@pytest.mark.slow
@pytest.mark.zoo  # heavy end-to-end: `make test-zoo` (keeps `make test` within 20 minutes)
def test_beitv2_prunes_to_half_the_macs_and_matches_its_onnx_file(tmp_path):
    torch.manual_seed(0)
    model = timm.create_model("beitv2_base_patch16_224", img_size=64).eval()
    model.blocks = model.blocks[:2]  # the structure, at a size CI can afford
    program = capture(model, torch.randn(1, 3, 64, 64), name="beitv2").eval()
    result = remove_channels(program, config={"macs": 0.5, "round_to": 8})
    assert abs(result.stats["macs_after"] / result.stats["macs_before"] - 0.5) <= 0.015
    assert tuple(result.program.run_example().shape) == (1, 1000)
    parity = check_parity(result.program, export_onnx(result.program, tmp_path / "beitv2.onnx").path)
    assert parity.relative < 1e-4
