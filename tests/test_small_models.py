"""The small Fashion-MNIST models (prunefx:NAME): their size, how build_model resolves them, and that
channel pruning reaches a MACs target on each (exactness is checked in test_channel_removal.py)."""

import functools

import pytest
import torch

from prunefx.graph import capture, count, verify
from prunefx.loading import program_from_reference
from prunefx.models import ModelReferenceError, build_model
from prunefx.models.small import list_models, resnet_cifar
from prunefx.passes import comb_channels, remove_channels
from prunefx.passes.comb_channels import ChannelGroups

# name: (parameters, MACs at 1x1x28x28), both in millions, as (low, high)
EXPECTED = {
    "convnext_fmnist": ((0.4, 0.43), (9, 12)),
    "resnet20": ((0.26, 0.28), (25, 35)),
    "resnet56": ((0.84, 0.87), (85, 105)),
    "mobilenetv2_small": ((0.3, 0.5), (5, 20)),
    "vit_tiny_fmnist": ((0.7, 0.9), (35, 50)),
}
PRUNED = ["resnet20", "mobilenetv2_small", "vit_tiny_fmnist"]  # resnet56 is resnet20's builder, deeper
VIT_BLOCKS, VIT_HEADS, VIT_HEAD_DIM = 6, 4, 32


pytestmark = pytest.mark.usefixtures("one_thread")


@functools.lru_cache(maxsize=1)
def _captured(name: str):
    torch.manual_seed(0)
    spec = build_model(f"prunefx:{name}")
    return capture(spec.module, torch.randn(2, 1, 28, 28), name=spec.name).eval()


def captured(name: str):
    return _captured(name).clone()


def test_every_model_is_listed_and_expected():
    assert list_models() == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_reference_builds_an_eval_model_for_28x28_gray_images(name):
    spec = build_model(f"prunefx:{name}")
    assert (spec.kind, spec.name, spec.default_input_shape) == ("module", f"prunefx:{name}", (1, 1, 28, 28))
    assert not spec.module.training
    with torch.no_grad():
        out = spec.module(torch.randn(3, 1, 28, 28))
    assert out.shape == (3, 10) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_parameters_and_macs_at_28x28(name):
    (low_params, high_params), (low_macs, high_macs) = EXPECTED[name]
    cost = count(capture(build_model(f"prunefx:{name}").module, torch.randn(1, 1, 28, 28)))
    assert low_params <= cost.params / 1e6 <= high_params
    assert low_macs <= cost.macs / 1e6 <= high_macs


def test_resnet20_matches_the_paper_layout():
    model = build_model("prunefx:resnet20").module
    assert sum(p.numel() for p in model.parameters()) == 272_186  # 0.27 M in He et al., plus projections
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(convs) == 19 and [c.out_channels for c in convs[::6]] == [16, 16, 32, 64]
    projections = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (1, 1)]
    assert [(p.in_channels, p.out_channels, p.stride) for p in projections] == [(16, 32, (2, 2)), (32, 64, (2, 2))]


def test_resnet_depth_must_be_6n_plus_2():
    assert len(resnet_cifar(32).stages[0]) == 5
    with pytest.raises(ValueError, match="6n\\+2"):
        resnet_cifar(21)


def test_image_size_resizes_the_vit_and_sets_the_shape_of_the_cnns():
    vit = build_model("prunefx:vit_tiny_fmnist", image_size=32)
    assert vit.default_input_shape == (1, 1, 32, 32) and vit.module.pos_embed.shape == (1, 65, 128)
    cnn = build_model("prunefx:mobilenetv2_small", image_size=32)
    assert cnn.default_input_shape == (1, 1, 32, 32)
    with torch.no_grad():
        assert vit.module(torch.randn(1, 1, 32, 32)).shape == cnn.module(torch.randn(1, 1, 32, 32)).shape == (1, 10)
    with pytest.raises(ModelReferenceError, match="30x30 .* not a multiple of the patch size 4"):
        build_model("prunefx:vit_tiny_fmnist", image_size=30)


def test_command_line_reference_captures_at_the_requested_shape():
    program = program_from_reference("prunefx:vit_tiny_fmnist", input_shape="2x1x32x32")
    assert tuple(program.example_inputs[0].shape) == (2, 1, 32, 32)
    with torch.no_grad():
        assert program(torch.randn(2, 1, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("ref, expected", [
    ("prunefx:resnet2", "resnet20"),
    ("prunefx:mobilenet_v2_small", "mobilenetv2_small"),
    ("prunefx:vit_tiny", "vit_tiny_fmnist"),
])
def test_unknown_names_suggest_close_matches(ref, expected):
    with pytest.raises(ModelReferenceError, match="unknown prunefx model .*did you mean") as info:
        build_model(ref)
    assert expected in str(info.value)


def test_unknown_name_without_close_match_and_empty_name():
    with pytest.raises(ModelReferenceError, match="list_models"):
        build_model("prunefx:zzzzqqqq")
    with pytest.raises(ModelReferenceError, match="names no model: write prunefx:NAME"):
        build_model("prunefx:")


@pytest.mark.parametrize("name", PRUNED)
def test_prune_to_half_the_macs(name):
    # ResNet-20's first stage is 16 channels wide: with widths in steps of 8 it can only keep 8 or 16,
    # and the single global threshold jumps from 0.475 to 0.545 of the MACs; steps of 4 reach 0.5.
    config = {"macs": 0.5, **({"round_to": 4} if name == "resnet20" else {})}
    result = remove_channels(captured(name), config=config)
    stats = result.stats
    assert result.modified and stats["target"]["met"]
    # nothing is blocked: the ViT's q/k/v split is three slices taken apart by index, not a width
    assert stats["blocked"] == []
    assert stats["macs_after"] == pytest.approx(0.5 * stats["macs_before"], rel=0.03)
    assert (stats["macs_predicted"], stats["params_predicted"]) == (stats["macs_after"], stats["params_after"])
    assert stats["params_after"] < stats["params_before"]
    verify(result.program)  # lint, shapes, finite outputs, re-export
    with torch.no_grad():
        assert result.program(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_vit_combing_finds_heads_and_head_dims_in_every_block():
    result = comb_channels(captured("vit_tiny_fmnist"))
    stats = result.stats
    # the q/k/v split (unbind) takes a dim apart by index: not a width, so not reported as blocked
    assert (stats["blocked_groups"], stats["blocking_operators"]) == (0, [])
    groups = result.facts_as(ChannelGroups).groups
    for block in range(VIT_BLOCKS):
        attention = [g for g in groups if f"blocks.{block}.attn.qkv.weight:0" in g["members"]]
        assert sorted((g["size"], g["factor"]) for g in attention) == [(VIT_HEADS, True), (VIT_HEAD_DIM, True)]
    # the embedding width runs through every block, the class token and the position embedding
    embedding = [g for g in groups if "pos_embed:2" in g["members"]]
    assert len(embedding) == 1 and {"cls_token:2", "patch_embed.weight:0"} <= set(embedding[0]["members"])


def test_vit_pruning_keeps_whole_heads_of_equal_width():
    result = remove_channels(captured("vit_tiny_fmnist"), config={"macs": 0.5})
    verify(result.program)
    groups = result.stats["groups"]
    for block in range(VIT_BLOCKS):
        heads, head_dims = sorted((g for g in groups if f"blocks.{block}.attn.qkv.weight:0" in g["members"]),
                                  key=lambda g: g["width_before"])
        assert (heads["width_before"], head_dims["width_before"]) == (VIT_HEADS, VIT_HEAD_DIM)
        qkv = result.program.module.get_parameter(f"blocks.{block}.attn.qkv.weight")
        assert qkv.shape[0] == 3 * heads["width_after"] * head_dims["width_after"]
    assert any(g["width_after"] < g["width_before"] for g in groups if g["factor"])


class _GainConv(torch.nn.Module):
    """timm's ScaledStdConv2d pattern: a per-output gain of shape [C, 1, 1, 1] read through view(-1)."""

    def __init__(self, inputs, outputs):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(outputs, inputs, 3, 3))
        self.gain = torch.nn.Parameter(torch.ones(outputs, 1, 1, 1))

    def forward(self, x):
        return torch.nn.functional.conv2d(x, self.weight * self.gain.view(-1)[:, None, None, None], padding=1)


def test_a_parameters_size_one_dims_are_not_channel_groups():
    from prunefx.graph.channels.groups import find_channel_groups

    model = torch.nn.Sequential(_GainConv(3, 32), torch.nn.ReLU(), _GainConv(32, 16), torch.nn.ReLU()).eval()
    program = capture(model, torch.randn(1, 3, 8, 8))
    combing = find_channel_groups(program.module)
    assert [len(group.classes) for group in combing.groups] == [32]  # the hidden channels (the output is fixed); no 1s


def test_attentions_q_k_v_split_is_not_reported_as_blocked_channels():
    import timm

    from prunefx.graph.channels.groups import find_channel_groups

    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=1, embed_dim=64, num_heads=2,
                              img_size=32).eval()
    combing = find_channel_groups(capture(model, torch.randn(1, 3, 32, 32)).module)
    assert not [blocked for blocked in combing.blocked if blocked.operators == ["aten.unbind.int"]]
    assert combing.groups  # the widths themselves are still found
