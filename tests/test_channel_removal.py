"""Dependency analysis + channel removal on real models: zero the weights of chosen channels of every
exact group, remove them, and the outputs do not move beyond float tolerance."""

import numpy as np
import pytest
import torch
import torch.utils._pytree as pytree

from prunefx.graph import PrunefxError, capture, count, verify
from prunefx.graph.attributes import get_tensor
from prunefx.graph.channels.groups import find_channel_groups
from prunefx.graph.channels.removal import remove_classes
from prunefx.models import build_model

MODELS = [
    "torchvision:resnet18", "torchvision:mobilenet_v2", "torchvision:densenet121", "torchvision:resnext50_32x4d",
    "torchvision:efficientnet_b0", "torchvision:mobilenet_v3_large", "torchvision:googlenet",
    "torchvision:regnet_y_400mf", "torchvision:swin_t", "torchvision:deeplabv3_mobilenet_v3_large",
    "torchvision:resnet50", "torchvision:convnext_tiny", "torchvision:vit_b_16", "torchvision:shufflenet_v2_x1_0",
    "torchvision:efficientnet_v2_s", "torchvision:mnasnet1_0", "torchvision:squeezenet1_1", "torchvision:maxvit_t",
    "torchvision:fcn_resnet50", "torchvision:lraspp_mobilenet_v3_large",
    "timm:deit_tiny_patch16_224", "timm:convnext_atto", "timm:ghostnet_100", "timm:poolformer_s12",
    "timm:vit_small_patch16_224", "timm:efficientnet_b0", "timm:swin_tiny_patch4_window7_224",
    "timm:deit3_small_patch16_224", "timm:mobilevit_xs", "timm:levit_128s", "timm:efficientformer_l1",
    "prunefx:resnet20", "prunefx:mobilenetv2_small", "prunefx:vit_tiny_fmnist",
    # relative-position bias tables per head (BEiT v2), fused q/k/v with rotary embeddings (EVA-02),
    # conv-attention hybrids with relative-position MLPs, and more CNN/hybrid families
    "timm:beitv2_base_patch16_224", "timm:eva02_tiny_patch14_224", "timm:coatnet_rmlp_nano_rw_224",
    "timm:maxxvit_rmlp_nano_rw_256", "torchvision:regnet_x_400mf", "torchvision:mobilenet_v3_small",
    "timm:fastvit_t8", "timm:efficientvit_b0",
    # multi-query attention (one key/value head), a channel order built from a Python list in a submodule, and
    # a position encoding shared under several module names
    "timm:mobilenetv4_hybrid_medium", "timm:csatv2", "timm:coat_lite_tiny",
]
# The smallest input each model takes when 64 pixels is too small (window partitions of 7 at stride 32);
# the Fashion-MNIST models get their own 28x28 gray images.
IMAGE_SIZES = {"torchvision:maxvit_t": 224, "timm:efficientformer_l1": 224, "timm:eva02_tiny_patch14_224": 56,
               **{reference: 28 for reference in MODELS if reference.startswith("prunefx:")}}
# Deep transformers keep their first blocks only: the structure at a size CI can afford.
DEPTHS = {"timm:beitv2_base_patch16_224": 2, "timm:eva02_tiny_patch14_224": 2}
IN_CHANNELS = {reference: 1 for reference in MODELS if reference.startswith("prunefx:")}


pytestmark = pytest.mark.usefixtures("one_thread")


def _flat_outputs(program, x) -> torch.Tensor:
    return torch.cat([t.flatten() for t in pytree.tree_leaves(program(x))])


def _randomise_zero_parameters(program) -> None:
    """Zero-initialised parameters (torchvision ViT's head) can make the output identically zero, and
    an exactness check on a zero output proves nothing: give them random values."""
    with torch.no_grad():
        for parameter in program.module.parameters():
            if parameter.is_floating_point() and not parameter.any():
                parameter.normal_(std=0.02)


# Their families stay in `make test` through smaller members (resnet18, swin and maxxvit via coatnet's windows and
# relative-position MLPs, deit_tiny for the ViTs, torchvision's efficientnet_b0, convnext_atto, poolformer for the
# MetaFormers, deeplabv3_mobilenet_v3_large's MobileNetV3 backbone for the mobile hybrids).
ZOO_LANE = {'torchvision:maxvit_t', 'torchvision:densenet121', 'torchvision:efficientnet_v2_s', 'torchvision:swin_t',
            'timm:swin_tiny_patch4_window7_224', 'torchvision:resnext50_32x4d', 'torchvision:fcn_resnet50',
            'torchvision:resnet50', 'torchvision:convnext_tiny', 'torchvision:vit_b_16', 'timm:beitv2_base_patch16_224',
            'timm:deit3_small_patch16_224', 'timm:maxxvit_rmlp_nano_rw_256', 'timm:vit_small_patch16_224',
            'timm:efficientnet_b0', 'timm:efficientformer_l1', 'timm:fastvit_t8',
            # inverted residuals and grouped convs stay through mobilenet_v2, MobileNetV3 and regnet_y, the mobile
            # hybrids through MobileNetV3, attention biases through test_attention_bias.py
            'torchvision:mnasnet1_0', 'torchvision:mobilenet_v3_small', 'torchvision:regnet_x_400mf',
            'timm:ghostnet_100', 'timm:levit_128s',
            # torchvision's MobileNetV2 blocks stay through prunefx:mobilenetv2_small and efficientnet_b0
            'torchvision:mobilenet_v2',
            # the segmentation heads stay through deeplabv3_mobilenet_v3_large
            'torchvision:lraspp_mobilenet_v3_large',
            # their structures stay through test_structural_cases.py's multi_query_attention,
            # permuted_in_submodule and shared_under_several_names
            'timm:mobilenetv4_hybrid_medium', 'timm:csatv2', 'timm:coat_lite_tiny',
            # MobileNetV3-Large stays as deeplabv3_mobilenet_v3_large's backbone; channel shuffles through
            # test_channels_can_be_removed_across_channel_shuffles and ShuffleNet's rebatching (test_rebatch.py)
            'torchvision:mobilenet_v3_large', 'torchvision:shufflenet_v2_x1_0'}


@pytest.mark.slow
@pytest.mark.parametrize("reference", MODELS)
def test_removing_zeroed_channels_is_exact(reference, zero_channels):
    torch.manual_seed(0)
    size = IMAGE_SIZES.get(reference, 64)
    x = torch.randn(1, IN_CHANNELS.get(reference, 3), size, size)
    model = build_model(reference, image_size=size).module
    if reference in DEPTHS:
        model.blocks = model.blocks[:DEPTHS[reference]]
    program = capture(model, x, name=reference).eval()
    _randomise_zero_parameters(program)
    combing = find_channel_groups(program.module)
    exact_groups = [g for g in combing.groups if g.exact and g.size >= 2]
    assert exact_groups, "every model here has removable channels"

    rng = np.random.default_rng(0)
    removed = {int(c) for g in exact_groups for c in rng.choice(g.classes, g.size // 3, replace=False)}
    zero_channels(program, combing, removed)
    expected = _flat_outputs(program, x)
    assert expected.abs().max() > 0, "a zero output would make the check vacuous"
    macs_before = count(program).macs

    assert remove_classes(program.module, combing.analysis, removed)
    program.recompile()
    verify(program)
    actual = _flat_outputs(program, x)
    assert actual.shape == expected.shape
    assert (actual - expected).abs().max() <= 1e-4 * expected.abs().max()
    assert count(program).macs < 0.9 * macs_before


def test_unknown_operator_blocks_its_channels_and_is_reported():
    class Unknown(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Conv2d(3, 8, 1), torch.nn.Conv2d(8, 4, 1)

        def forward(self, x):
            return self.b(torch.cumsum(self.a(x), dim=1))  # cumsum over channels has no rule

    program = capture(Unknown().eval(), torch.randn(1, 3, 4, 4))
    combing = find_channel_groups(program.module)
    assert not any(("a.weight", 0) in g.members for g in combing.groups)
    blocked = [b for b in combing.blocked if ("a.weight", 0) in b.members]
    assert blocked and blocked[0].operators == ["aten.cumsum.default"]


def _channel_shuffle(x):
    """ShuffleNetV2's shuffle with two groups: [N, 2, C/2, H, W] -> transposed -> [N, C, H, W]."""
    n, c, h, w = x.shape
    return x.view(n, 2, c // 2, h, w).transpose(1, 2).contiguous().view(n, c, h, w)


class _TinyShuffleNet(torch.nn.Module):
    """Two ShuffleNetV2 units in a row: half the channels pass through each unit, so each shuffle's
    output halves are the previous shuffle's interleaved channels."""

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 8, 1)
        self.branches = torch.nn.ModuleList(torch.nn.Conv2d(4, 4, 1) for _ in range(2))
        self.head = torch.nn.Conv2d(8, 5, 1)

    def forward(self, x):
        x = self.stem(x)
        for branch in self.branches:
            kept, changed = x.chunk(2, dim=1)
            x = _channel_shuffle(torch.cat([kept, torch.relu(branch(changed))], 1))
        return self.head(x)


def test_channels_can_be_removed_across_channel_shuffles(zero_channels):
    torch.manual_seed(0)
    x = torch.randn(1, 3, 4, 4)
    combing = find_channel_groups(capture(_TinyShuffleNet().eval(), x).module)
    classes = [int(c) for g in combing.groups for c in g.classes]
    assert any(("stem.weight", 0) in g.members and ("head.weight", 1) in g.members for g in combing.groups)
    assert not any(g.factor for g in combing.groups)  # the two groups of the shuffle are not prunable
    for cls in classes:  # every channel on its own: the shuffle's halves stay equal and outputs exact
        program = capture(_TinyShuffleNet().eval(), x)
        combing = find_channel_groups(program.module)
        zero_channels(program, combing, {cls})
        expected = _flat_outputs(program, x)
        remove_classes(program.module, combing.analysis, {cls})
        program.recompile()
        verify(program, reexport=False)
        assert torch.allclose(_flat_outputs(program, x), expected, atol=1e-6)


def test_a_width_flattened_into_a_linear_is_not_a_factor_group():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.Flatten(), torch.nn.Linear(4 * 2 * 2, 3))
    groups = find_channel_groups(capture(model.eval(), torch.randn(1, 3, 2, 2)).module).groups
    assert [(g.size, g.factor) for g in groups] == [(4, False)]
    assert ("2.weight", 1) in groups[0].members


class _EinsumAttention(torch.nn.Module):
    """MaxViT-style attention: einsum products and a relative-position bias gathered by an index buffer."""

    def __init__(self, heads: int = 2, head_dim: int = 4, tokens: int = 4):
        super().__init__()
        self.heads = heads
        self.qkv, self.proj = torch.nn.Linear(8, 3 * heads * head_dim), torch.nn.Linear(heads * head_dim, 8)
        self.table = torch.nn.Parameter(torch.randn(7, heads))
        self.register_buffer("index", torch.randint(0, 7, (tokens, tokens)))

    def forward(self, x):
        b, n, _ = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        logits = torch.einsum("bhid,bhjd->bhij", q, k) + self.table[self.index].permute(2, 0, 1)
        out = torch.einsum("bhij,bhjd->bhid", logits.softmax(-1), v)
        return self.proj(out.transpose(1, 2).reshape(b, n, -1))


def test_einsum_attention_with_a_gathered_bias_loses_a_head_and_a_head_dim_exactly(zero_channels):
    torch.manual_seed(0)
    x = torch.randn(1, 4, 8)
    program = capture(_EinsumAttention().eval(), x)
    combing = find_channel_groups(program.module)
    heads = [g for g in combing.groups if g.factor and ("table", 1) in g.members]
    head_dims = [g for g in combing.groups if g.factor and g.size == 4]
    assert [g.size for g in heads] == [2] and len(head_dims) == 1
    removed = {int(heads[0].classes[1]), int(head_dims[0].classes[0])}
    zero_channels(program, combing, removed)
    expected = _flat_outputs(program, x)
    remove_classes(program.module, combing.analysis, removed)
    program.recompile()
    verify(program, reexport=False)
    assert tuple(get_tensor(program.module, "table").shape) == (7, 1)
    assert torch.allclose(_flat_outputs(program, x), expected, atol=1e-6)


def test_attention_heads_and_head_dims_are_separate_factor_groups():
    program = capture(build_model("timm:deit_tiny_patch16_224", image_size=32).module, torch.randn(1, 3, 32, 32))
    groups = find_channel_groups(program.module).groups
    block0 = [g for g in groups if g.factor and ("blocks.0.attn.qkv.weight", 0) in g.members]
    assert sorted(g.size for g in block0) == [3, 64]  # 3 heads of 64 dims


def test_comb_channels_pass_hands_its_groups_to_the_caller_as_typed_facts():
    from prunefx.passes import Pipeline, comb_channels
    from prunefx.passes.comb_channels import ChannelGroups

    program = capture(build_model("torchvision:resnet18").module, torch.randn(1, 3, 32, 32)).eval()
    result = Pipeline([comb_channels]).run(program)
    stats = result.stats()["comb_channels"]
    assert not result.modified and stats["groups"] == 12 and stats["blocked_groups"] == 0
    facts = result.facts("comb_channels", ChannelGroups)
    assert len(facts.groups) == 12 and facts.blocked == []
    assert facts.groups[0]["size"] == 64 and "conv1.weight:0" in facts.groups[0]["members"]
    assert result.program.analysis.to_json() == {}  # nothing stored that the first width change makes stale
    kept = Pipeline([(comb_channels, {"keep": ["conv2d"]})]).run(program).stats()["comb_channels"]
    assert kept["groups"] < stats["groups"]  # the stem's group is kept whole
    with pytest.raises(PrunefxError, match="'keep' names 'conv2d_99', which is not a node of"):
        Pipeline([(comb_channels, {"keep": ["conv2d_99"]})]).run(program)


def test_inspect_lists_channel_groups(capsys):
    import json

    from prunefx.cli import main

    assert main(["inspect", "torchvision:resnet18", "--input-shape", "1x3x32x32", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert len(info["channel_groups"]) == 12 and info["blocked_groups"] == []
    # per stage: the residual stream and the inner width of each of its two blocks
    assert sum(g["size"] for g in info["channel_groups"]) == 3 * (64 + 128 + 256 + 512)


@pytest.mark.slow
def test_eva02_prunes_to_half_the_macs_with_onnx_parity(tmp_path):
    """EVA-02: q/k/v unbound from one projection and rotary embeddings over pairs of head dims (a strided
    slice and a stack). Heads, head-dim pairs and MLP widths are prunable, so half the MACs is reachable;
    the pruned program keeps its output shape and matches its ONNX file."""
    from prunefx.passes import remove_channels
    from prunefx.runtime import check_parity, export_onnx

    torch.manual_seed(0)
    reference = "timm:eva02_tiny_patch14_224"
    model = build_model(reference, image_size=56).module
    model.blocks = model.blocks[:DEPTHS[reference]]
    program = capture(model, torch.randn(1, 3, 56, 56), name=reference).eval()
    qkv = [g for g in find_channel_groups(program.module).groups if ("blocks.0.attn.qkv.weight", 0) in g.members]
    assert sorted(g.size for g in qkv if g.factor) == [3, 32]  # 3 heads; 32 rotary pairs of 64 head dims
    shape = tuple(program.run_example().shape)
    result = remove_channels(program, config={"macs": 0.5, "round_to": 8})
    assert abs(result.stats["macs_after"] / result.stats["macs_before"] - 0.5) <= 0.03 * 0.5
    assert tuple(result.program.run_example().shape) == shape
    parity = check_parity(result.program, export_onnx(result.program, tmp_path / "eva02.onnx").path)
    assert parity.relative < 1e-4
