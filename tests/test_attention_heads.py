"""Attention after pruning keeps the shape fused kernels want: scaled_dot_product_attention stays one op
through every pass that keeps attention in float, heads go whole by default (every head keeps its dense
head dim), and where head dims go (`heads='dims'`) the dense softmax scale is passed to the op explicitly,
so removing zero-weight head dims is exact. Checked on a small timm ViT and a Hugging Face ViT (sdpa), both
with random weights."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from prunefx.graph import capture, verify
from prunefx.graph.channels.attention_dims import head_dim_groups
from prunefx.graph.channels.groups import find_channel_groups
from prunefx.graph.errors import PrunefxError
from prunefx.passes.comb_channels import comb_channels
from prunefx.passes.core import config_checks
from prunefx.passes.fold_batchnorm import fold_batchnorm
from prunefx.passes.merge_blocks import merge_blocks
from prunefx.passes.prune_to_budget import prune_to_budget
from prunefx.passes.quantize_int8 import quantize_int8
from prunefx.passes.remove_channels import remove_channels
from prunefx.passes.sparsify_nm import sparsify_nm

pytestmark = pytest.mark.usefixtures("one_thread")
SDPA = torch.ops.aten.scaled_dot_product_attention.default
HEAD_DIM = 64


def timm_vit():
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    return VisionTransformer(img_size=32, patch_size=8, embed_dim=2 * HEAD_DIM, depth=2, num_heads=2,
                             mlp_ratio=2.0, num_classes=10).eval()


def hf_vit():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.ViTConfig(hidden_size=2 * HEAD_DIM, num_hidden_layers=2, num_attention_heads=2,
                                    intermediate_size=256, image_size=32, patch_size=8, num_labels=10,
                                    attn_implementation="sdpa")
    model = transformers.ViTForImageClassification(config).eval()

    class Logits(torch.nn.Module):  # the HF output object as a plain tensor
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, x):
            return self.model(pixel_values=x).logits

    return Logits().eval()


MODELS = {"timm": timm_vit, "hf": hf_vit}


def _program(kind: str):
    x = torch.randn(1, 3, 32, 32)
    return capture(MODELS[kind](), x, name=f"{kind}_vit").eval(), x


def _attention_nodes(program) -> list[torch.fx.Node]:
    return [node for node in program.module.graph.nodes if node.target is SDPA]


def _head_dims(program) -> list[int]:
    return [node.args[0].meta["val"].shape[-1] for node in _attention_nodes(program)]


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_whole_heads_by_default_keep_every_head_dim_and_the_fused_op(kind):
    program, _ = _program(kind)
    assert len(_attention_nodes(program)) == 2 and _head_dims(program) == [HEAD_DIM] * 2
    scales = [node.kwargs.get("scale") for node in _attention_nodes(program)]  # HF passes its own, timm none
    result = remove_channels(program, config={"macs": 0.6, "strict": False})
    verify(result.program)
    assert result.stats["heads"] == "whole"
    assert result.stats["macs_after"] < 0.75 * result.stats["macs_before"]  # the MLPs and the stream went
    assert _head_dims(program) == [HEAD_DIM] * 2
    assert [node.kwargs.get("scale") for node in _attention_nodes(program)] == scales


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_head_dims_go_only_when_asked_with_the_dense_scale_kept(kind):
    program, _ = _program(kind)
    result = remove_channels(program, config={"macs": 0.5, "heads": "dims", "strict": False})
    verify(result.program)
    nodes = _attention_nodes(program)
    assert len(nodes) == 2 and min(_head_dims(program)) < HEAD_DIM
    for node, head_dim in zip(nodes, _head_dims(program)):
        if head_dim != HEAD_DIM:
            assert node.kwargs["scale"] == pytest.approx(1 / math.sqrt(HEAD_DIM))


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_removing_zero_weight_head_dims_is_exact(kind, removal_is_exact):
    program, x = _program(kind)
    combing = find_channel_groups(program.module)
    pinned = head_dim_groups(program.module, combing)
    # timm's fused qkv gives q, k and v one head-dim group per block; HF's separate q/k and v, two
    assert [combing.groups[i].size for i in pinned] == [HEAD_DIM] * (2 if kind == "timm" else 4)
    removed = {int(c) for i in pinned for c in combing.groups[i].classes[:HEAD_DIM // 4]}
    removal_is_exact(program, combing, removed, x)
    assert _head_dims(program) == [HEAD_DIM - HEAD_DIM // 4] * 2
    assert all(node.kwargs["scale"] == pytest.approx(HEAD_DIM ** -0.5) for node in _attention_nodes(program))


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_removing_a_zero_weight_head_is_exact_and_keeps_the_fused_op(kind, removal_is_exact):
    program, x = _program(kind)
    combing = find_channel_groups(program.module)
    heads = [g for g in combing.groups if g.factor and g.size == 2]
    assert len(heads) == 2  # one head group per block
    removal_is_exact(program, combing, {int(g.classes[0]) for g in heads}, x)
    assert len(_attention_nodes(program)) == 2
    assert all(node.args[0].meta["val"].shape[1] == 1 for node in _attention_nodes(program))


def _fake_latency(dense, candidate):
    """Milliseconds proportional to MACs: enough for prune_to_budget to choose a candidate."""
    from prunefx.graph import count

    return float(count(dense).macs) / 1e6, float(count(candidate).macs) / 1e6, 0.0


PASSES = {
    "comb_channels": (comb_channels, {}),
    "fold_batchnorm": (fold_batchnorm, {}),
    "merge_blocks": (merge_blocks, {}),
    "sparsify_nm": (sparsify_nm, {"min_channels": 8}),
    "quantize_int8 attention=False": (quantize_int8, {"attention": False, "calibration": [torch.randn(1, 3, 32, 32)]}),
    "remove_channels whole": (remove_channels, {"macs": 0.6, "strict": False}),
    "remove_channels dims": (remove_channels, {"macs": 0.6, "heads": "dims", "strict": False}),
    "remove_channels uniform": (remove_channels, {"macs": 0.6, "ranking": "uniform", "strict": False}),
    "prune_to_budget": (prune_to_budget, {"speedup": 1.5, "latency": _fake_latency, "confirm": False}),
}


@pytest.mark.parametrize("kind", sorted(MODELS))
@pytest.mark.parametrize("name", sorted(PASSES))
def test_every_float_pass_keeps_attention_one_op(kind, name):
    """quantize_int8 spells attention out on purpose when asked for INT8 attention (its default), so that its
    matmuls can be quantized; every other pass keeps the one op."""
    program, x = _program(kind)
    function, config = PASSES[name]
    result = function(program, config=dict(config))
    assert len(_attention_nodes(result.program)) == 2
    assert np.isfinite(result.program.module(x).detach().numpy()).all()


def test_uniform_ranking_narrows_heads_and_refuses_whole_heads():
    program, _ = _program("timm")
    result = remove_channels(program, config={"macs": 0.6, "ranking": "uniform", "strict": False})
    assert result.stats["heads"] == "dims" and max(_head_dims(program)) < HEAD_DIM
    with pytest.raises(config_checks.ConfigError, match="uniform .* heads='dims'"):
        remove_channels(program, config={"macs": 0.6, "ranking": "uniform", "heads": "whole"})
    with pytest.raises(config_checks.ConfigError, match="'heads' must be one of whole, dims"):
        remove_channels(program, config={"macs": 0.6, "heads": "half"})


class EinsumAttention(torch.nn.Module):
    """Attention spelled as einsums (torchvision's MaxViT writes it so): 2 heads of 8 dims for q/k, 4 for v."""

    def __init__(self):
        super().__init__()
        self.q, self.k, self.v = torch.nn.Linear(8, 16), torch.nn.Linear(8, 16), torch.nn.Linear(8, 8)
        self.proj = torch.nn.Linear(8, 8)

    def forward(self, x):
        b, n, _ = x.shape
        q, k = (f(x).view(b, n, 2, 8) for f in (self.q, self.k))
        v = self.v(x).view(b, n, 2, 4)
        scores = torch.einsum("bihd,bjhd->bhij", q, k).softmax(-1)
        return self.proj(torch.einsum("bhij,bjhd->bihd", scores, v).reshape(b, n, 8))


def test_einsum_attention_head_dims_are_found_and_kept_whole():
    torch.manual_seed(0)
    program = capture(EinsumAttention().eval(), torch.randn(1, 5, 8), name="einsum").eval()
    combing = find_channel_groups(program.module)
    pinned = sorted(combing.groups[i].size for i in head_dim_groups(program.module, combing))
    assert pinned == [4, 8]  # the q/k head dim and the v head dim; the heads (2) are no head dims
    result = remove_channels(program, config={"channels": 0.5, "round_to": 1, "strict": False})
    widths = {(g["width_before"], g["factor"]): g["width_after"] for g in result.stats["groups"]}
    assert widths[(8, True)] == 8 and widths[(4, True)] == 4


@pytest.mark.parametrize("channels, round_to", [(0.7, 1), (0.7, 8), (0.6, 4), (0.45, 2)])
def test_uniform_ranking_keeps_one_proportion_a_config_can_hold(channels, round_to):
    """Hidden width, attention width (heads x head dim) and MLP width all keep one fraction of the dense ones,
    read from the weights' shapes: a ViT config (hidden size, head count, MLP ratio) then describes the result."""
    from prunefx.models.small import MODELS
    torch.manual_seed(0)
    program = capture(MODELS["vit_tiny_fmnist"]().eval(), torch.randn(2, 1, 28, 28))
    dense = program.module.state_dict()
    result = remove_channels(program, config={"channels": channels, "ranking": "uniform", "round_to": round_to,
                                              "importance": "l2", "strict": False})
    weights = result.program.module.state_dict()
    fractions = {weights[name].shape[0] / dense[name].shape[0]
                 for name in ("patch_embed.weight", "blocks.0.attn.qkv.weight", "blocks.0.mlp.0.weight")}
    assert len(fractions) == 1 and fractions.pop() < 1


def test_uniform_ranking_refuses_widths_no_fraction_keeps_in_proportion():
    # 12 and 20 channels at round_to 4: 12 keeps 4 or 8 (a third, two thirds), which no width of 20 matches
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 12, 3), torch.nn.ReLU(), torch.nn.Conv2d(12, 20, 3), torch.nn.ReLU(),
                                torch.nn.Conv2d(20, 5, 3))
    program = capture(model.eval(), torch.randn(1, 3, 16, 16))
    with pytest.raises(PrunefxError, match="uniform ranking: no width below the whole .* round_to 4"):
        remove_channels(program, config={"channels": 0.5, "ranking": "uniform", "round_to": 4, "importance": "l2"})
