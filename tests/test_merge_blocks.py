"""UPDP merging: the affine algebra against torch, LayerNorm -> BatchNorm, and merge_blocks on real models
(exact in eval mode, fewer layers or MACs, re-exportable), the kernel-growth bound and the measure hook."""

import pytest
import timm
import torch
import torchvision

from prunefx.graph import PrunefxError, capture, verify
from prunefx.graph.analysis_record import LinearizeRecord
from prunefx.graph.depth.affine_maps import ChannelAffine, Conv, Linear, NotExact
from prunefx.graph.depth.affine_merge import add_identity, merge, merged_shape
from prunefx.graph.depth.norm_replacement import NormReplacementError, layer_norm_to_batch_norm
from prunefx.passes.core.registry import get_pass
from prunefx.passes.merge_blocks import MergeBlocksError, merge_blocks

aten = torch.ops.aten
pytestmark = pytest.mark.usefixtures("one_thread")


def _conv(out_channels, in_channels, kernel, *, groups=1, stride=1, padding=0, seed=0):
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(out_channels, in_channels // groups, kernel, kernel, generator=generator, dtype=torch.float64)
    bias = torch.randn(out_channels, generator=generator, dtype=torch.float64)
    return Conv(weight, bias, (stride, stride), (padding, padding), (1, 1), groups)


def _channel(channels, dim=1, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return ChannelAffine(torch.rand(channels, generator=generator, dtype=torch.float64) + 0.5,
                         torch.randn(channels, generator=generator, dtype=torch.float64), dim)


def _apply_all(ops, x):
    for op in ops:
        x = op(x)
    return x


# --- algebra --------------------------------------------------------------------------------------------
CHAINS = {
    "1x1 o 1x1": [_conv(6, 4, 1), _conv(5, 6, 1, seed=1)],
    "pointwise o depthwise(stride 2, pad 1) o pointwise": [_conv(12, 4, 1), _conv(12, 12, 3, groups=12, stride=2, padding=1, seed=1),
                                                           _conv(5, 12, 1, seed=2)],
    "depthwise o pointwise": [_conv(6, 6, 3, groups=6, padding=1), _conv(4, 6, 1, seed=1)],
    "kxk(stride 2, pad 1) o kxk(no pad)": [_conv(6, 3, 3, stride=2, padding=1), _conv(4, 6, 3, seed=1)],
    "1x1 stride 2 o kxk(no pad)": [_conv(6, 3, 1, stride=2), _conv(4, 6, 3, seed=1)],
    "grouped o grouped": [_conv(8, 4, 3, groups=2, padding=1), _conv(6, 8, 1, groups=2, seed=1)],
    "grouped o other grouping": [_conv(8, 4, 3, groups=2), _conv(8, 8, 3, groups=4, seed=1)],
    "batch norm before a padded kxk (bias map)": [_channel(4), _conv(5, 4, 3, padding=1, seed=1)],
    "conv, batch norm, layer scale": [_conv(6, 4, 3, padding=1), _channel(6), ChannelAffine(_channel(6, seed=1).scale, None, 1)],
}


@pytest.mark.parametrize("name", list(CHAINS))
def test_merged_convolutions_equal_the_chain(name):
    ops = CHAINS[name]
    channels = ops[0].weight.shape[1] * ops[0].groups if isinstance(ops[0], Conv) else ops[0].scale.numel()
    x = torch.randn(2, channels, 11, 11, dtype=torch.float64)
    merged = merge(ops, x.shape)
    assert isinstance(merged, Conv)
    shape_only = merged_shape(ops)  # what merge_blocks decides MACs on, before composing weights
    assert shape_only.weight.shape == merged.weight.shape and shape_only.groups == merged.groups
    assert (shape_only.stride, shape_only.padding) == (merged.stride, merged.padding)
    expected, actual = _apply_all(ops, x), merged(x)
    assert actual.shape == expected.shape
    torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-10)


def test_bias_map_only_where_zero_padding_meets_a_bias():
    x_shape = (1, 4, 9, 9)
    padded = merge([_conv(6, 4, 1), _conv(6, 6, 3, groups=6, padding=1, seed=1)], x_shape)
    assert padded.bias_map is not None and padded.bias_map.shape == (1, 6, 9, 9)
    unpadded = merge([_conv(6, 4, 1), _conv(6, 6, 3, groups=6, seed=1)], x_shape)
    assert unpadded.bias_map is None and unpadded.bias is not None
    assert unpadded.weight.shape == (6, 4, 3, 3) and unpadded.groups == 1  # pointwise o depthwise: dense 3x3


def test_padding_between_two_kxk_convolutions_is_not_merged():
    with pytest.raises(NotExact, match="zero-pads the intermediate map"):
        merge([_conv(4, 4, 3, padding=1), _conv(4, 4, 3, padding=1, seed=1)], (1, 4, 8, 8))


def test_linear_chain_with_batch_norm_and_residual_is_one_linear():
    x = torch.randn(3, 7, 8, dtype=torch.float64)
    generator = torch.Generator().manual_seed(0)
    fc1 = Linear(torch.randn(32, 8, generator=generator).double(), torch.randn(32, generator=generator).double())
    fc2 = Linear(torch.randn(8, 32, generator=generator).double(), torch.randn(8, generator=generator).double())
    ops = [_channel(8, dim=-1), fc1, fc2]
    merged = add_identity(merge(ops, x.shape))
    assert isinstance(merged, Linear) and merged.weight.shape == (8, 8)
    torch.testing.assert_close(merged(x), x + _apply_all(ops, x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("groups", [1, 2, 6])
def test_identity_kernel_folds_a_residual(groups):
    conv = _conv(6, 6, 3, groups=groups, padding=1)
    x = torch.randn(2, 6, 7, 7, dtype=torch.float64)
    torch.testing.assert_close(add_identity(conv)(x), x + conv(x), rtol=1e-10, atol=1e-10)
    with pytest.raises(NotExact, match="changes the shape"):
        add_identity(_conv(6, 6, 3, padding=1, stride=2))


# --- LayerNorm -> BatchNorm -----------------------------------------------------------------------------
def _layer_norms(program):
    return [node for node in program.graph.nodes if node.target is aten.layer_norm.default]


def _batch_norms(program):
    return [node for node in program.graph.nodes if node.target is aten.batch_norm.default]


def test_token_layer_norm_becomes_reshaped_batch_norm_with_its_affine_parameters():
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 5)).eval()
    x = torch.randn(2, 3, 6)
    program = capture(model, x).eval()
    norm = layer_norm_to_batch_norm(program, _layer_norms(program)[0])
    assert not _layer_norms(program) and _batch_norms(program) == [norm]
    assert norm.args[0].target is aten.reshape.default and norm.args[5] is False
    buffers = dict(program.module.named_buffers())
    assert set(buffers) == {"1.running_mean", "1.running_var"}
    buffers["1.running_mean"].copy_(torch.randn(8))
    buffers["1.running_var"].copy_(torch.rand(8) + 0.5)
    reference = torch.nn.BatchNorm1d(8, eps=model[1].eps).eval()
    reference.load_state_dict({"weight": model[1].weight, "bias": model[1].bias, "running_mean": buffers["1.running_mean"],
                               "running_var": buffers["1.running_var"], "num_batches_tracked": torch.tensor(0)})
    with torch.no_grad():
        expected = model[2](reference(model[0](x).reshape(-1, 8)).reshape(2, 3, 8))
        torch.testing.assert_close(program(x), expected)
    program.train()
    assert norm.args[5] is True  # Program.train() flips the new batch norm like any other


def test_timm_layer_norm_2d_becomes_batch_norm_on_nchw_without_permutes():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), timm.layers.LayerNorm2d(8), torch.nn.Conv2d(8, 4, 1)).eval()
    program = capture(model, torch.randn(2, 3, 9, 9))
    program.train()
    norm = layer_norm_to_batch_norm(program, _layer_norms(program)[0])
    assert norm.args[5] is True and norm.args[0].target is aten.conv2d.default
    assert not any(node.target is aten.permute.default for node in program.graph.nodes)
    program.eval()
    verify(program)


def test_layer_norm_over_several_dims_is_refused():
    program = capture(torch.nn.LayerNorm([4, 5]).eval(), torch.randn(2, 4, 5))
    with pytest.raises(NormReplacementError, match="last dim"):
        layer_norm_to_batch_norm(program, _layer_norms(program)[0])


# --- merge_blocks on models -----------------------------------------------------------------------------
def _replace_modules(model, kind, replacement=torch.nn.Identity):
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, kind):
                setattr(module, name, replacement())


def _randomise_statistics(program, seed=0):
    """Fresh models have identity batch-norm statistics, which would hide a wrong fold."""
    generator = torch.Generator().manual_seed(seed)  # drawn on the CPU, so a GPU program gets the same values
    for name, tensor in program.module.named_buffers():
        if name.endswith("running_mean"):
            tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.5)
        elif name.endswith("running_var"):
            tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
    with torch.no_grad():
        for name, tensor in program.module.named_parameters():
            if "bias" in name:
                tensor.add_((torch.randn(tensor.shape, generator=generator) * 0.1).to(tensor.device))


def _layer_count(program):
    return sum(node.target in (aten.conv2d.default, aten.linear.default) for node in program.graph.nodes)


def _assert_exact_and_exports(program, result, expected):
    actual = result.program.run_example()
    assert (actual - expected).abs().max() <= 1e-4 * expected.abs().max()
    verify(result.program)  # lints, shapes kept, finite, re-exports
    assert merge_blocks(result.program).modified is False  # nothing left to merge: honest `modified`


@pytest.mark.slow
def test_mobilenet_v2_inverted_residuals_become_one_dense_conv_each():
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v2(num_classes=10).eval()
    for block in model.features[1:-1]:
        _replace_modules(block, torch.nn.ReLU6)
    program = capture(model, torch.randn(2, 3, 64, 64)).eval()
    _randomise_statistics(program)
    expected, layers = program.run_example(), _layer_count(program)
    result = merge_blocks(program)
    stats = result.stats
    assert stats["batch_norms_after"] == 0 and stats["merged"]["residual"] == 10
    assert stats["merged"]["layers"] == 16 and stats["macs_after"] < 0.75 * stats["macs_before"]
    assert _layer_count(result.program) == layers - 32  # 16 blocks of 3 convs -> 1 each
    assert any("bias map" in merge.get("result", "") for merge in stats["merges"])
    assert any("zero-pads" in skip["reason"] for skip in stats["skipped"])
    _assert_exact_and_exports(program, result, expected)


def test_resnet34_folds_every_batch_norm_and_keeps_padded_3x3_pairs():
    torch.manual_seed(0)
    model = torchvision.models.resnet34(num_classes=10).eval()
    for layer in (model.layer1, model.layer2, model.layer3, model.layer4):
        _replace_modules(layer, torch.nn.ReLU)
    program = capture(model, torch.randn(1, 3, 64, 64)).eval()
    _randomise_statistics(program)
    expected, layers = program.run_example(), _layer_count(program)
    result = merge_blocks(program)
    assert result.stats["merged"] == {"fold_after": 36} and result.stats["batch_norms_after"] == 0
    assert _layer_count(result.program) == layers and result.stats["macs_after"] == result.stats["macs_before"]
    reasons = {skip["kind"]: skip["reason"] for skip in result.stats["skipped"]}
    assert "zero-pads" in reasons["layers"] and "not one layer" in reasons["residual"]
    _assert_exact_and_exports(program, result, expected)


@pytest.mark.slow
def test_convnext_atto_blocks_with_batch_norms_merge_their_mlp():
    torch.manual_seed(0)
    model = timm.create_model("convnext_atto", pretrained=False, num_classes=10).eval()
    for stage in model.stages:
        for block in stage.blocks:
            block.mlp.act = torch.nn.Identity()
    program = capture(model, torch.randn(2, 3, 64, 64)).eval()
    for node in _layer_norms(program):
        layer_norm_to_batch_norm(program, node, recompile=False)
    program.recompile()
    _randomise_statistics(program)
    expected, layers = program.run_example(), _layer_count(program)
    result = merge_blocks(program)
    stats = result.stats
    assert stats["merged"]["layers"] == 12  # every block: PW2 o PW1 (C -> 4C -> C) becomes one C -> C 1x1
    assert _layer_count(result.program) == layers - 12 and stats["macs_after"] < 0.3 * stats["macs_before"]
    assert stats["batch_norms_after"] == 1  # the head's norm, before flatten: no layer to fold into
    _assert_exact_and_exports(program, result, expected)


@pytest.mark.slow
def test_deit_tiny_mlp_blocks_become_one_linear_each():
    torch.manual_seed(0)
    model = timm.create_model("deit_tiny_patch16_224", pretrained=False, img_size=64, num_classes=10).eval()
    for block in model.blocks:
        block.mlp.act = torch.nn.Identity()
    program = capture(model, torch.randn(2, 3, 64, 64)).eval()
    for node in _layer_norms(program):
        if "norm2" in node.args[2].target:
            layer_norm_to_batch_norm(program, node, recompile=False)
    program.recompile()
    _randomise_statistics(program)
    expected, layers = program.run_example(), _layer_count(program)
    result = merge_blocks(program)
    stats = result.stats
    assert stats["merged"]["fold_before"] == stats["merged"]["layers"] == stats["merged"]["residual"] == 12
    assert _layer_count(result.program) == layers - 12 and stats["batch_norms_after"] == 0
    _assert_exact_and_exports(program, result, expected)


# --- configuration, preconditions, measurement ----------------------------------------------------------
class _TwoDepthwise(torch.nn.Module):
    """Two unpadded depthwise 3x3 on a small map: one 5x5 depthwise has fewer MACs, but a bigger kernel."""

    def __init__(self):
        super().__init__()
        self.first, self.second = torch.nn.Conv2d(8, 8, 3, groups=8), torch.nn.Conv2d(8, 8, 3, groups=8)

    def forward(self, x):
        return self.second(self.first(x))


def test_kernel_growth_is_bounded_by_the_config():
    model, x = _TwoDepthwise().eval(), torch.randn(2, 8, 8, 8)
    refused = merge_blocks(capture(model, x))
    assert not refused.modified and "max_kernel_growth" in refused.stats["skipped"][0]["reason"]
    merged = merge_blocks(capture(model, x), config={"max_kernel_growth": 2})
    conv = next(node for node in merged.program.graph.nodes if node.target is aten.conv2d.default)
    assert merged.stats["merged"] == {"layers": 1} and conv.args[6] == 8  # still depthwise, now 5x5
    assert tuple(conv.meta["val"].shape) == (2, 8, 4, 4)
    with torch.no_grad():
        torch.testing.assert_close(merged.program(x), model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("speedup", [0.9, 1.3])
def test_measure_decides_layer_merges(speedup):
    model, x = _TwoDepthwise().eval(), torch.randn(2, 8, 8, 8)
    seen = []

    def measure(before, after):
        seen.append((_layer_count(before), _layer_count(after)))
        return speedup

    result = merge_blocks(capture(model, x), config={"max_kernel_growth": 2, "measure": measure})
    assert seen == [(2, 1)]
    assert result.modified is (speedup > 1) and _layer_count(result.program) == (1 if speedup > 1 else 2)
    if speedup < 1:
        assert "measured speed-up 0.900x" in result.stats["skipped"][0]["reason"]
    with torch.no_grad():
        torch.testing.assert_close(result.program(x), model(x), rtol=1e-5, atol=1e-5)


def test_refuses_training_mode_and_unknown_options_and_is_registered():
    program = capture(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4)).train(),
                      torch.randn(2, 3, 4, 4))
    with pytest.raises(MergeBlocksError, match="eval mode"):
        merge_blocks(program)
    with pytest.raises(PrunefxError, match="unknown option"):
        merge_blocks(program.eval(), config={"max_growth": 2})
    assert get_pass("merge_blocks") is merge_blocks


def test_finished_blends_are_stripped_then_merged():
    from prunefx.graph.depth.linearization import blend_activation, new_blend_buffer, set_blends

    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 6)).eval()
    x = torch.randn(3, 6)
    program = capture(model, x).eval()
    buffer = new_blend_buffer(program.module, "mlp")
    relu = next(node for node in program.graph.nodes if node.target is aten.relu.default)
    blend_activation(program.module, relu, buffer)
    program.analysis.linearize = LinearizeRecord(blends={buffer: "mlp"})
    program.recompile()
    assert merge_blocks(program).stats["merged"] == {}  # l = 0: the ReLU is still there
    set_blends(program.module, [buffer], 1.0)
    result = merge_blocks(program)
    assert result.stats["blends_stripped"] == [buffer] and result.stats["merged"] == {"layers": 1}
    with torch.no_grad():
        torch.testing.assert_close(result.program(x), model[2](model[0](x)), rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_merges_a_program_on_the_gpu_and_keeps_it_there():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 1), torch.nn.BatchNorm2d(16),
                                torch.nn.Conv2d(16, 16, 3, padding=1, groups=16), torch.nn.Conv2d(16, 4, 1))
    model = model.eval().cuda()
    x = torch.randn(2, 3, 12, 12, device="cuda")
    program = capture(model, x).eval()
    _randomise_statistics(program)
    expected = program.run_example()
    result = merge_blocks(program)
    assert result.stats["merged"] == {"fold_after": 1, "layers": 1}
    assert all(tensor.is_cuda for tensor in result.program.state_dict().values())
    torch.testing.assert_close(result.program.run_example(), expected, rtol=1e-4, atol=1e-4)


class _InPlaceResidual(torch.nn.Module):
    """`y += conv(y)` writes into y, which an earlier view reads (`skip_written`), or `out += y` writes into the
    block's own output, which nothing else reads."""

    def __init__(self, skip_written: bool):
        super().__init__()
        self.skip_written = skip_written
        self.c0, self.c1 = torch.nn.Conv2d(3, 4, 1), torch.nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        y = self.c0(x)
        head = y[:, :2]
        if self.skip_written:
            y += self.c1(y)
            return y, head * 2
        out = self.c1(y)
        out += y
        return out, head * 2


@pytest.mark.parametrize("skip_written, folded", [(True, 0), (False, 1)])
def test_an_in_place_residual_is_folded_only_where_it_writes_into_the_block_output(skip_written, folded):
    torch.manual_seed(0)
    model, x = _InPlaceResidual(skip_written).eval(), torch.randn(1, 3, 8, 8)
    program = capture(model, x).eval()
    stats = merge_blocks(program).stats  # called bare: no Pipeline to catch a rewrite that is not exact
    assert stats["merged"].get("residual", 0) == folded
    with torch.no_grad():
        for expected, got in zip(model(x), program(x)):
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_merging_leaves_every_shape_a_fresh_propagation_gives_without_propagating_again(monkeypatch):
    """An exact merge keeps every shape and gives its new nodes theirs, so merge_blocks regenerates the code without
    running shape propagation over the whole graph (much of what ranking blocks by their merge gains cost): the
    oracle is a propagation of the merged graph from scratch."""
    import importlib

    from prunefx.graph.depth.blocks import find_blocks
    from prunefx.models import build_model
    from prunefx.passes.linearize_blocks import linearize_blocks

    torch.manual_seed(0)
    dense = capture(build_model("prunefx:mobilenetv2_small").module.eval(), torch.randn(2, 1, 28, 28)).eval()
    blocks = [block.name for block in find_blocks(dense.module) if block.affine]
    linearized = linearize_blocks(dense, config={"blocks": blocks, "mode": "abrupt"}).program
    program_module = importlib.import_module("prunefx.graph.program")
    propagations = []
    monkeypatch.setattr(program_module, "propagate_shapes",
                        lambda *args, real=program_module.propagate_shapes: (propagations.append(1), real(*args))[1])
    before = len(linearized.graph.nodes)
    merged = merge_blocks(linearized, config={}).program  # in place
    assert len(merged.graph.nodes) < before and not propagations

    def shapes(program):
        return {node.name: tuple(node.meta["val"].shape) for node in program.graph.nodes
                if isinstance(node.meta.get("val"), torch.Tensor)}

    fresh = merged.clone()
    fresh.refresh_meta()
    assert propagations and shapes(merged) == shapes(fresh) and len(shapes(fresh)) > 20
    verify(merged)


@pytest.mark.parametrize("confirmed", [(0.99, 0.97, 1.01), (1.04, 1.02, 1.06)])
def test_a_merge_read_faster_once_is_kept_only_if_the_longer_confirmation_says_so(confirmed):
    """The runtime's measure (speedup_of a PairMeasurer): a short reading of 1.05x is measured again by the pair's
    confirmation, judged against min_speedup, and that reading decides the merge and is the one reported."""
    from prunefx.graph.timing import Timing
    from prunefx.runtime.measure.speedup import PairMeasurer, speedup_of

    asked = []

    def confirm(dense, candidate, against=None):
        asked.append(against)
        speedup, low, high = confirmed
        return Timing(speedup, 1.0, 0.01, low, high, 0.9, "t")

    confirm.stops_early = True
    measurer = PairMeasurer(lambda dense, candidate: (1.05, 1.0, 0.01), confirm, round_to=None)
    model, x = _TwoDepthwise().eval(), torch.randn(2, 8, 8, 8)
    result = merge_blocks(capture(model, x), config={"max_kernel_growth": 2, "measure": speedup_of(measurer),
                                                     "min_speedup": 1.0})
    assert asked == [1.0]
    if confirmed[0] > 1:
        assert result.stats["merges"][0]["speedup"] == 1.04 and result.stats["merges"][0]["speedup_interval"] == [1.02, 1.06]
        assert _layer_count(result.program) == 1
    else:
        assert not result.modified and _layer_count(result.program) == 2
        assert "measured speed-up 0.990x (90 % interval 0.970-1.010) is not above 1.0x" in result.stats["skipped"][0]["reason"]
