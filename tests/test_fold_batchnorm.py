"""fold_batchnorm is exact on real models, honest about `modified`, and leaves training-mode BNs alone."""

import pytest
import torch
import torchvision

from prunefx.graph import capture, verify
from prunefx.passes.fold_batchnorm import fold_batchnorm


def _randomise_batchnorms(model: torch.nn.Module) -> torch.nn.Module:
    # Freshly built models have identity statistics, which would make a wrong fold look exact.
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            n = module.num_features
            module.running_mean.copy_(torch.rand(n, generator=generator) * 2 - 1)
            module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            module.bias.data.copy_(torch.rand(n, generator=generator) - 0.5)
    return model.eval()


def _batch_norm_count(program) -> int:
    return sum(1 for n in program.graph.nodes if n.target is torch.ops.aten.batch_norm.default)


@pytest.mark.parametrize("name", ["resnet50", "mobilenet_v2"])
def test_fold_is_exact_and_idempotent(name):
    torch.manual_seed(0)
    model = _randomise_batchnorms(torchvision.models.get_model(name, num_classes=100))
    x = torch.randn(2, 3, 64, 64)
    program = capture(model, x, name=name)
    result = fold_batchnorm(program)

    assert result.modified
    assert result.stats["folded"] == result.stats["batch_norms"] > 0
    assert _batch_norm_count(result.program) == 0
    assert not any("running_mean" in key for key in result.program.state_dict())
    with torch.no_grad():
        expected, actual = model(x), result.program(x)
    assert (expected - actual).abs().max() <= 1e-5 * expected.abs().max()
    verify(result.program)
    assert fold_batchnorm(result.program).modified is False


def test_folds_linear_followed_by_batchnorm1d_and_creates_missing_bias():
    model = _randomise_batchnorms(torch.nn.Sequential(torch.nn.Linear(6, 4, bias=False), torch.nn.BatchNorm1d(4)))
    x = torch.randn(3, 6)
    result = fold_batchnorm(capture(model, x))
    assert result.stats["folded"] == 1
    with torch.no_grad():
        assert torch.allclose(result.program(x), model(x), atol=1e-6)


def test_leaves_training_mode_and_shared_layers_alone():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    program = capture(model.train(), torch.randn(2, 3, 8, 8))
    result = fold_batchnorm(program)
    assert not result.modified
    assert result.stats["left_in_training_mode"] == 1

    class ConvFeedsTwo(torch.nn.Module):  # conv output used by the BN and by a residual: not foldable
        def __init__(self):
            super().__init__()
            self.conv, self.bn = torch.nn.Conv2d(4, 4, 1), torch.nn.BatchNorm2d(4)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y

    result = fold_batchnorm(capture(_randomise_batchnorms(ConvFeedsTwo()), torch.randn(1, 4, 5, 5)))
    assert not result.modified and result.stats["left_no_foldable_layer"] == 1


@pytest.mark.parametrize("out_channels", [6, 8])
def test_a_batch_norm_over_the_length_of_an_unbatched_conv_is_left_alone(out_channels):
    """An unbatched conv1d gives [C, L]; BatchNorm1d then normalises dim 1, the length, not the conv's channels."""
    model = _randomise_batchnorms(torch.nn.Sequential(torch.nn.Conv1d(3, out_channels, 3, padding=1),
                                                      torch.nn.BatchNorm1d(6)))
    result = fold_batchnorm(capture(model, torch.randn(3, 6)))
    assert result.stats["folded"] == 0
    fresh = torch.randn(3, 6)
    with torch.no_grad():
        assert torch.allclose(result.program(fresh), model(fresh), atol=1e-6)


class _ConvolutionTransposed(torch.nn.Module):
    """A transposed convolution written as aten.convolution (transposed=True), as some exporters leave it."""

    def __init__(self, deconvolution: torch.nn.ConvTranspose2d):
        super().__init__()
        self.deconvolution = deconvolution

    def forward(self, x):
        layer = self.deconvolution
        return torch.ops.aten.convolution(x, layer.weight, layer.bias, layer.stride, layer.padding, layer.dilation,
                                          True, layer.output_padding, layer.groups)


@pytest.mark.parametrize("dims, groups, bias, as_convolution", [
    (2, 1, True, False), (2, 3, False, False), (1, 3, True, False), (3, 1, False, False), (2, 3, True, True)])
def test_folds_a_batch_norm_after_a_transposed_convolution_per_output_channel_of_each_group(
        dims, groups, bias, as_convolution):
    torch.manual_seed(0)
    deconvolution = getattr(torch.nn, f"ConvTranspose{dims}d")(6, 9, 3, stride=2, groups=groups, bias=bias)
    layer = _ConvolutionTransposed(deconvolution) if as_convolution else deconvolution
    model = _randomise_batchnorms(torch.nn.Sequential(layer, getattr(torch.nn, f"BatchNorm{dims}d")(9)))
    x = torch.randn(2, 6, *[5] * dims)
    result = fold_batchnorm(capture(model, x))
    assert result.stats["folded"] == 1 and _batch_norm_count(result.program) == 0
    with torch.no_grad():
        expected = model(x)
        torch.testing.assert_close(result.program(x), expected, rtol=0, atol=1e-5 * float(expected.abs().max()))


class _LinearNorm(torch.nn.Module):
    """LeViT's linear + BatchNorm1d over the tokens: bn(linear(x).flatten(0, 1)).reshape_as(...); `flatten` says
    which dims are joined, and `also_read` adds a reader of the linear's values besides the batch norm."""

    def __init__(self, flatten=(0, 1), also_read=False):
        super().__init__()
        self.linear, self.norm = torch.nn.Linear(6, 8), torch.nn.BatchNorm1d(8)
        self.flatten, self.also_read = flatten, also_read

    def forward(self, x):
        y = self.linear(x)
        flat = y.flatten(*self.flatten)
        if flat.shape[-1] != 8:  # the features joined with the tokens: normalise what BatchNorm1d can take
            flat = flat.reshape(-1, 8)
        out = self.norm(flat).reshape_as(y)
        return out + y if self.also_read else out


@pytest.mark.parametrize("flatten, also_read, folded", [((0, 1), False, 1), ((0, -2), False, 1), ((1, 2), False, 0),
                                                        ((0, 1), True, 0)])
def test_folds_linear_and_batch_norm_over_flattened_tokens_only_where_the_features_stay_last(flatten, also_read,
                                                                                            folded):
    torch.manual_seed(0)
    model = _randomise_batchnorms(_LinearNorm(flatten, also_read))
    x = torch.randn(2, 5, 6)
    result = fold_batchnorm(capture(model, x))
    assert result.stats["folded"] == folded
    with torch.no_grad():
        torch.testing.assert_close(result.program(x), model(x), rtol=1e-5, atol=1e-5)


def test_folds_levits_batch_norms_exactly():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = _randomise_batchnorms(timm.create_model("levit_128s", pretrained=False))
    x = torch.randn(1, 3, 224, 224)
    result = fold_batchnorm(capture(model, x))
    # all but the head's two, which sit after a mean over the tokens
    assert result.stats["folded"] == result.stats["batch_norms"] - 2 > 40
    with torch.no_grad():
        expected = model(x)
        assert (result.program(x) - expected).abs().max() <= 1e-5 * expected.abs().max()
