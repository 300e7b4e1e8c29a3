"""Attention on other than 4-D inputs reaches the dynamo ONNX exporter folded to 4-D (runtime/onnx/attention_dims.py):
the file is the dynamo exporter's, and ONNX Runtime computes what torch does."""

import pytest
import torch
import torch.nn.functional as F

from prunefx.graph import capture
from prunefx.runtime import OnnxRuntimeSession, export_onnx
from prunefx.runtime.onnx.attention_dims import attention_in_four_dims


class _GroupedAttention(torch.nn.Module):
    """Attention within groups of tokens, Twins-style: (batch, groups, heads, tokens, dim), or 3-D with `rank` 3;
    a relative-position bias per head as the mask with `masked`."""

    def __init__(self, rank: int = 5, masked: bool = False):
        super().__init__()
        self.qkv, self.rank = torch.nn.Linear(16, 48), rank
        self.bias = torch.nn.Parameter(torch.randn(2, 5, 5)) if masked else None

    def forward(self, x):
        batch, groups, tokens, _ = x.shape
        q, k, v = self.qkv(x).reshape(batch, groups, tokens, 3, 2, 8).permute(3, 0, 1, 4, 2, 5).unbind(0)
        if self.rank == 3:
            q, k, v = (t.reshape(batch * groups * 2, tokens, 8) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=self.bias)
        return out.reshape(batch, groups, 2, tokens, 8).transpose(2, 3).reshape(batch, groups, tokens, 16)


@pytest.mark.parametrize("rank, masked", [(5, False), (5, True), (3, False)])
def test_attention_of_another_rank_exports_with_dynamo_and_computes_the_same(tmp_path, rank, masked):
    torch.manual_seed(0)
    model, x = _GroupedAttention(rank, masked).eval(), torch.randn(2, 3, 5, 16)
    program = capture(model, x)
    exported = export_onnx(program, tmp_path / "model.onnx")
    assert exported.exporter == "dynamo", exported.fallback_reason
    other = torch.randn(2, 3, 5, 16)  # not the captured input: the fold holds for any
    with torch.no_grad():
        want = model(other).numpy()
    got = OnnxRuntimeSession(exported.path).run(other)[0]
    assert abs(got - want).max() <= 1e-5 * abs(want).max()


def test_four_dimensional_attention_and_the_given_program_are_left_alone():
    torch.manual_seed(0)
    five_d = torch.export.export(_GroupedAttention(5, True).eval(), (torch.randn(2, 3, 5, 16),))
    before = five_d.graph_module.code
    folded = attention_in_four_dims(five_d)
    assert folded is not five_d and five_d.graph_module.code == before
    ranks = [node.args[0].meta["val"].dim() for node in folded.graph.nodes
             if node.target is torch.ops.aten.scaled_dot_product_attention.default]
    assert ranks == [4]
    four_d = torch.export.export(_FourD().eval(), (torch.randn(2, 5, 16),))
    assert any(node.target is torch.ops.aten.scaled_dot_product_attention.default for node in four_d.graph.nodes)
    assert attention_in_four_dims(four_d) is four_d


class _FourD(torch.nn.Module):
    def forward(self, x):
        heads = x.reshape(2, 5, 2, 8).transpose(1, 2)  # (batch, heads, tokens, dim): what the exporter takes
        return F.scaled_dot_product_attention(heads, heads, heads)
