"""Dependency analysis + channel removal on real models: zero the weights of chosen channels of every
exact group, remove them, and the outputs do not move beyond float tolerance."""

import numpy as np
import pytest
import torch
import torch.utils._pytree as pytree

from prunefx.graph import capture, count, verify
from prunefx.graph.attributes import get_tensor
from prunefx.graph.channel_groups import find_channel_groups
from prunefx.graph.channel_removal import expand_removed, remove_classes
from prunefx.models import build_model

MODELS = [
    "torchvision:resnet18", "torchvision:mobilenet_v2", "torchvision:densenet121", "torchvision:resnext50_32x4d",
    "torchvision:efficientnet_b0", "torchvision:mobilenet_v3_large", "torchvision:googlenet",
    "torchvision:regnet_y_400mf", "torchvision:swin_t", "torchvision:deeplabv3_mobilenet_v3_large",
    "timm:deit_tiny_patch16_224", "timm:convnext_atto", "timm:ghostnet_100", "timm:poolformer_s12",
]


def _flat_outputs(program, x) -> torch.Tensor:
    return torch.cat([t.flatten() for t in pytree.tree_leaves(program(x))])


def _zero_channels(program, combing, removed: set[int]) -> None:
    """Zero every slice of every tensor that the removed classes touch (running variances become 1)."""
    gone = np.array(sorted(expand_removed(combing.analysis, removed)))
    for node in program.graph.nodes:
        if node.op != "get_attr":
            continue
        tensor = get_tensor(program.module, node.target)
        for dim, labels in enumerate(combing.analysis.node_labels[node]):
            mask = np.isin(combing.analysis.classes[labels], gone)
            if mask.any():
                with torch.no_grad():
                    tensor.index_fill_(dim, torch.from_numpy(np.flatnonzero(mask)),
                                       1.0 if "running_var" in node.target else 0.0)


@pytest.mark.slow
@pytest.mark.parametrize("reference", MODELS)
def test_removing_zeroed_channels_is_exact(reference):
    torch.manual_seed(0)
    x = torch.randn(1, 3, 64, 64)
    program = capture(build_model(reference, image_size=64).module, x, name=reference).eval()
    combing = find_channel_groups(program.module)
    exact_groups = [g for g in combing.groups if g.exact and g.size >= 2]
    assert exact_groups, "every model here has removable channels"

    rng = np.random.default_rng(0)
    removed = {int(c) for g in exact_groups for c in rng.choice(g.classes, g.size // 3, replace=False)}
    _zero_channels(program, combing, removed)
    expected = _flat_outputs(program, x)
    macs_before = count(program).macs

    assert remove_classes(program.module, combing.analysis, removed) > 0
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


def test_attention_heads_and_head_dims_are_separate_factor_groups():
    program = capture(build_model("timm:deit_tiny_patch16_224", image_size=32).module, torch.randn(1, 3, 32, 32))
    groups = find_channel_groups(program.module).groups
    block0 = [g for g in groups if g.factor and ("blocks.0.attn.qkv.weight", 0) in g.members]
    assert sorted(g.size for g in block0) == [3, 64]  # 3 heads of 64 dims


def test_comb_channels_pass_stores_groups_that_survive_save_and_load(tmp_path):
    from prunefx.graph import Program
    from prunefx.passes import Pipeline, comb_channels

    program = capture(build_model("torchvision:resnet18").module, torch.randn(1, 3, 32, 32)).eval()
    result = Pipeline([comb_channels]).run(program)
    stats = result.stats()["comb_channels"]
    assert not result.modified and stats["groups"] == 12 and stats["blocked_groups"] == 0
    stored = result.program.analysis["channel_groups"]["groups"]
    assert stored[0]["size"] == 64 and "conv1.weight:0" in stored[0]["members"]
    reloaded = Program.load(result.program.save(tmp_path / "combed.pt2"))
    assert reloaded.analysis["channel_groups"] == result.program.analysis["channel_groups"]


def test_inspect_lists_channel_groups(capsys):
    import json

    from prunefx.cli import main

    assert main(["inspect", "torchvision:resnet18", "--input-shape", "1x3x32x32", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert len(info["channel_groups"]) == 12 and info["blocked_groups"] == []
    # per stage: the residual stream and the inner width of each of its two blocks
    assert sum(g["size"] for g in info["channel_groups"]) == 3 * (64 + 128 + 256 + 512)
