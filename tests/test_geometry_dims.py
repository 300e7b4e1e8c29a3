"""Spatial dims are geometry, never channels: a Linear whose output is viewed as C x H x W and fed to a
convolution, transposed convolution, pooling or interpolation prunes C only. Before the fix the H and W
factors are not exact channel groups: cutting them would shrink a decoder's output from 16x16 to 8x8 with
exit status 0. The oracle is the exported ONNX file, read with onnx's own shape inference."""

from __future__ import annotations

import importlib
import textwrap

import onnx
import pytest
import torch
import torch.nn as nn

from prunefx.cli import main
from prunefx.graph import capture
from prunefx.graph.channels.groups import find_channel_groups
from prunefx.passes import remove_channels

MODELS = textwrap.dedent("""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F


    class Pooled(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(32, 256)
            self.conv = nn.Conv2d(16, 24, 3, padding=1)
            self.out = nn.Linear(24, 10)

        def head(self, z):
            return F.relu(self.fc(z)).view(-1, 16, 4, 4)

        def forward(self, z):
            return self.out(F.relu(self.conv(self.head(z))).mean((2, 3)))


    class Flattened(Pooled):
        def __init__(self):
            super().__init__()
            self.out = nn.Linear(24 * 16, 10)

        def forward(self, z):
            return self.out(F.relu(self.conv(self.head(z))).flatten(1))


    class Resized(Pooled):
        def forward(self, z):
            x = F.max_pool2d(F.interpolate(self.head(z), scale_factor=2), 2)
            return self.out(F.relu(self.conv(x)).mean((2, 3)))


    class PooledFirst(Pooled):
        def forward(self, z):
            x = F.avg_pool2d(self.head(z), 2)
            return self.out(F.relu(self.conv(x)).mean((2, 3)))


    class Decoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(32, 64 * 16)
            self.up1 = nn.ConvTranspose2d(64, 32, 4, 2, 1)
            self.bn = nn.BatchNorm2d(32)
            self.up2 = nn.ConvTranspose2d(32, 3, 4, 2, 1)

        def forward(self, z):
            x = self.fc(z).view(-1, 64, 4, 4)
            return torch.tanh(self.up2(F.relu(self.bn(self.up1(x)))))
    """)
NAMES = ["Pooled", "Flattened", "Resized", "PooledFirst", "Decoder"]


@pytest.fixture(scope="module")
def models_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("geometry") / "geometry_models.py"
    path.write_text(MODELS + "".join(f"\n\ndef {n.lower()}():\n    return {n}()\n" for n in NAMES))
    namespace: dict = {}
    exec(compile(MODELS, str(path), "exec"), namespace)
    return path, namespace


def _conv_input_spatial_sizes(path) -> list[tuple[int, ...]]:
    model = onnx.shape_inference.infer_shapes(onnx.load(path))
    shapes = {value.name: [d.dim_value for d in value.type.tensor_type.shape.dim]
              for value in [*model.graph.value_info, *model.graph.input, *model.graph.output]}
    return [tuple(shapes[node.input[0]][2:]) for node in model.graph.node if node.op_type in ("Conv", "ConvTranspose")]


@pytest.mark.parametrize("name", NAMES)
def test_only_real_channels_are_pruned(models_file, tmp_path, capsys, name):
    path, _ = models_file
    dense_dir, pruned_dir = tmp_path / "dense", tmp_path / "pruned"
    assert main(["export", f"{path}:{name.lower()}", "--input-shape", "1x32", "-o", str(dense_dir / "m.onnx")]) == 0
    assert main(["prune", f"{path}:{name.lower()}", "--input-shape", "1x32", "--channels", "0.5", "--round-to", "1",
                 "-o", str(pruned_dir)]) == 0, capsys.readouterr().err
    dense = onnx.load(dense_dir / "m.onnx")
    pruned = onnx.load(pruned_dir / "model.onnx")
    assert _conv_input_spatial_sizes(pruned_dir / "model.onnx") == _conv_input_spatial_sizes(dense_dir / "m.onnx")
    output_shape = [[d.dim_value for d in out.type.tensor_type.shape.dim] for out in pruned.graph.output]
    assert output_shape == [[d.dim_value for d in out.type.tensor_type.shape.dim] for out in dense.graph.output]
    weights = {init.name: tuple(init.dims) for init in pruned.graph.initializer}
    assert sum(map(len, weights.values())) > 0  # something was pruned: the channel factor still is prunable
    assert sum(torch.Size(d).numel() for d in weights.values()) < sum(
        torch.Size(tuple(init.dims)).numel() for init in dense.graph.initializer)


@pytest.mark.parametrize("name", NAMES)
def test_no_group_holds_a_spatial_factor_and_removal_is_exact(models_file, removal_is_exact, name):
    _, namespace = models_file
    torch.manual_seed(0)
    model, z = namespace[name]().eval(), torch.randn(2, 32)
    program = capture(model, z).eval()
    combing = find_channel_groups(program.module)
    view_widths = {4 * 4 * 16, 64 * 16}  # the Linear outputs: their groups must be the C factor, 16 or 64 wide
    for group in combing.groups:
        for tensor, dim in group.members:
            if tensor.startswith("fc.") and dim == 0:
                assert group.size in (16, 64), (name, group.members, group.size)
                assert group.size not in view_widths
    for index, group in enumerate(combing.groups):
        if not group.exact or group.size < 2:
            continue
        program = capture(model, z).eval()
        combing = find_channel_groups(program.module)
        removal_is_exact(program, combing, {int(c) for c in combing.groups[index].classes[:2]}, z)


def test_remove_channels_refuses_to_change_output_shapes(models_file, monkeypatch):
    """The pass-level guard: even if a rule let geometry through, the pass fails instead of returning a
    model with other output shapes (simulated by a removal that also shrinks the output)."""
    pass_module = importlib.import_module("prunefx.passes.remove_channels")  # the module, not the function

    _, namespace = models_file
    program = capture(namespace["Decoder"]().eval(), torch.randn(1, 32)).eval()
    real = pass_module.remove_classes

    def remove_and_break_the_output(module, analysis, removed):
        count = real(module, analysis, removed)
        output = next(n for n in module.graph.nodes if n.op == "output")
        with module.graph.inserting_before(output):
            narrowed = module.graph.call_function(torch.ops.aten.slice.Tensor, (output.args[0][0], 2, 0, 8))
        output.args = ((narrowed,),)
        return count

    monkeypatch.setattr(pass_module, "remove_classes", remove_and_break_the_output)
    with pytest.raises(Exception, match="changed the output shapes"):
        remove_channels(program, config={"channels": 0.5, "round_to": 1})


class SuperResolution(torch.nn.Module):
    """conv -> pixel_shuffle (32 = 8 x 2 x 2 channels) -> conv -> pixel_unshuffle (12 -> 48) -> conv."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Conv2d(3, 32, 3, padding=1)
        self.b = torch.nn.Conv2d(8, 12, 3, padding=1)
        self.c = torch.nn.Conv2d(48, 4, 1)

    def forward(self, x):
        y = torch.pixel_shuffle(torch.relu(self.a(x)), 2)
        return self.c(torch.pixel_unshuffle(torch.relu(self.b(y)), 2))


def test_pixel_shuffle_prunes_whole_sub_pixel_sets_exactly(removal_is_exact):
    torch.manual_seed(0)
    model, x = SuperResolution().eval(), torch.randn(1, 3, 8, 8)
    groups = find_channel_groups(capture(model, x).eval().module)
    assert not groups.blocked
    assert sorted(g.size for g in groups.groups) == [8, 12]  # C of the shuffle, and b's outputs
    for index in range(len(groups.groups)):
        program = capture(model, x).eval()
        combing = find_channel_groups(program.module)
        removal_is_exact(program, combing, {int(c) for c in combing.groups[index].classes[:2]}, x)
        if combing.groups[index].size == 8:  # 2 of the shuffle's 8 channels take 2 x 2 x 2 of a's 32 outputs
            assert program.module.a.weight.shape[0] == 24


class DistributionHead(nn.Module):
    """YOLO's distribution-focal-loss head in miniature: 4 box sides x 16 distance bins, a softmax over the
    bins, and their expected value by a 1x1 conv whose weights are 0..15. The bins are the categories of
    one distribution, not channels: before the softmax rule fixed them, 8 of the 16 could go."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.bins = nn.Conv2d(8, 4 * 16, 1)
        self.integral = nn.Conv2d(16, 1, 1, bias=False)
        self.integral.weight.data[:] = torch.arange(16, dtype=torch.float32).view(1, 16, 1, 1)

    def forward(self, x):
        logits = self.bins(torch.relu(self.stem(x)))
        n, _, h, w = logits.shape
        bins = logits.view(n, 4, 16, h * w).transpose(2, 1).softmax(1)  # [n, 16 bins, 4 sides, anchors]
        return self.integral(bins).view(n, 4, h * w)


def test_the_dim_a_softmax_normalises_is_never_pruned():
    program = capture(DistributionHead().eval(), torch.randn(1, 3, 8, 8))
    combing = find_channel_groups(program.module)
    assert not any(("integral.weight", 1) in group.members for group in combing.groups)  # the 16 bins stay
    assert not any(("bins.weight", 0) in group.members for group in combing.groups)
    assert any(("stem.weight", 0) in group.members for group in combing.groups)  # real channels still go
