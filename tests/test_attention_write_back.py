"""The write-back of a pruned ViT keeps attention fused: timm's `fused_attn` stays as it was, the module
computes what the Program computes on its fused and its unfused path alike, and capturing the written-back
module gives scaled_dot_product_attention again. Oracles: the Program's outputs on an input neither saw,
and a count of the attention ops in a fresh capture."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prunefx.graph import capture
from prunefx.graph.errors import PrunefxError
from prunefx.interop.write_back import to_module
from prunefx.passes.remove_channels import remove_channels

pytestmark = pytest.mark.usefixtures("one_thread")
SDPA = torch.ops.aten.scaled_dot_product_attention.default


def _vit(**options):
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    model = VisionTransformer(img_size=32, patch_size=8, embed_dim=128, depth=2, num_heads=2, mlp_ratio=2.0,
                              num_classes=10, **options).eval()
    for block in model.blocks:
        block.attn.fused_attn = True  # whatever TIMM_FUSED_ATTN says on this machine
    return model


def _relative_error(program, module) -> float:
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    program_x = torch.cat([program(x[i:i + 1]) for i in range(2)])  # the Program is captured at batch 1
    with torch.no_grad():
        module_x = module(x)
    return ((program_x - module_x).abs().max() / program_x.abs().max()).item()


def _attention_ops(module) -> int:
    recaptured = capture(module, torch.randn(1, 3, 32, 32), name="written back")
    return sum(node.target is SDPA for node in recaptured.module.graph.nodes)


def _pruned(model, heads: str):
    program = capture(model, torch.randn(1, 3, 32, 32), name="vit").eval()
    remove_channels(program, config={"macs": 0.5, "heads": heads, "strict": False})
    return program


@pytest.mark.parametrize("options", [{}, {"qk_norm": True}], ids=["plain", "qk_norm"])
def test_pruned_head_dims_keep_the_fused_path_and_the_dense_scale(options):
    model = _vit(**options)
    program = _pruned(model, "dims")
    module = to_module(program, model)
    attention = [block.attn for block in module.blocks]
    assert min(a.head_dim for a in attention) < 64  # the head dims did shrink
    assert all(a.fused_attn for a in attention)
    assert _relative_error(program, module) <= 1e-5
    assert _attention_ops(module) == 2
    for a in attention:  # the unfused path computes the same thing
        a.fused_attn = False
    assert _relative_error(program, module) <= 1e-5


def test_whole_heads_need_no_change_and_keep_the_program_s_tensors():
    model = _vit()
    program = _pruned(model, "whole")
    module = to_module(program, model)
    assert all(block.attn.fused_attn and block.attn.head_dim == 64 and block.attn.scale == 64 ** -0.5
               for block in module.blocks)
    state = module.state_dict()
    assert all(torch.equal(state[name], tensor) for name, tensor in program.state_dict().items() if name in state)
    assert _relative_error(program, module) <= 1e-5
    assert _attention_ops(module) == 2


class NormedQueries(nn.Module):
    """timm's convention with a query norm that has no affine weight: nowhere linear to fold a scale into."""

    def __init__(self, dim: int = 32, heads: int = 2):
        super().__init__()
        self.num_heads, self.head_dim = heads, dim // heads
        self.scale, self.fused_attn = self.head_dim ** -0.5, True
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.q_norm = nn.LayerNorm(self.head_dim, elementwise_affine=False)

    def forward(self, x):
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        out = nn.functional.scaled_dot_product_attention(self.q_norm(q), k, v)
        return x + self.proj(out.transpose(1, 2).reshape(b, n, self.num_heads * self.head_dim))


def test_a_query_norm_without_weight_is_refused_in_one_line():
    torch.manual_seed(0)
    model, x = NormedQueries().eval(), torch.randn(1, 5, 32)
    program = capture(model, x, name="NormedQueries").eval()
    remove_channels(program, config={"channels": 0.5, "heads": "dims", "round_to": 4, "strict": False})
    with pytest.raises(PrunefxError, match=r"NormedQueries calls fused attention .* query norm LayerNorm has no "
                                           r"affine weight .* heads='whole'") as refused:
        to_module(program, model)
    assert "\n" not in str(refused.value)


def test_a_hugging_face_vit_with_pruned_head_dims_keeps_sdpa():
    """Uniform ranking narrows every head (q, k and v alike, which HF's one head size needs); the written-back
    HF attention still calls the fused op, and computes what the Program computes."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.ViTConfig(hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=256,
                                    image_size=32, patch_size=8, num_labels=10, attn_implementation="sdpa")
    model = transformers.ViTForImageClassification(config).eval()
    x = torch.randn(1, 3, 32, 32)
    program = capture(model, x, name="hf_vit").eval()
    remove_channels(program, config={"channels": 0.5, "ranking": "uniform", "round_to": 8, "strict": False})
    module = to_module(program, model)
    assert module.config.hidden_size < 128 and module.config.num_attention_heads == 2
    other = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        expected, actual = program(other)["logits"], module(pixel_values=other).logits
    assert (expected - actual).abs().max() <= 1e-5 * expected.abs().max()
    recaptured = capture(module, x, name="written back")
    assert sum(node.target is SDPA for node in recaptured.module.graph.nodes) == 2
