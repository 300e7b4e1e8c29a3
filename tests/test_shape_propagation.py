"""Shape propagation's one-step results (graph/shape_propagation.py) against torch's own FakeTensorProp, the oracle:
every node's fake value alike in shape, strides, dtype and device, on real models and on the layouts, sizes and
dtypes where a shortcut could go wrong."""

from __future__ import annotations

import itertools

import pytest
import timm
import torch
import torchvision
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.passes.fake_tensor_prop import FakeTensorProp

from prunefx import capture
from prunefx.graph import shape_propagation
from prunefx.graph.shape_propagation import SHORTCUTS, propagate_shapes

aten = torch.ops.aten


def described(value):
    if isinstance(value, torch.Tensor):
        return tuple(value.shape), value.stride(), value.dtype, value.device
    if isinstance(value, (list, tuple)):
        return tuple(map(described, value))
    return value


def node_values(module: torch.fx.GraphModule) -> dict[str, object]:
    return {node.name: described(node.meta.get("val")) for node in module.graph.nodes}


def torch_values(module: torch.fx.GraphModule, inputs) -> dict[str, object]:
    with torch.no_grad():
        FakeTensorProp(module, mode=FakeTensorMode(allow_non_fake_inputs=True)).propagate(*inputs)
    return node_values(module)


def shortcuts_taken(monkeypatch) -> list:
    taken = []
    for target, rule in list(SHORTCUTS.items()):
        def counted(*args, rule=rule, target=target, **kwargs):
            result = rule(*args, **kwargs)
            if result is not None:
                taken.append(target)
            return result
        monkeypatch.setitem(SHORTCUTS, target, counted)
    return taken


class Norms(torch.nn.Module):
    """BatchNorm1d on (N, C) and (N, C, L), BatchNorm3d, a linear over a 3-D input and one without bias."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv3d(3, 4, 1)
        self.bn3 = torch.nn.BatchNorm3d(4)
        self.bn1 = torch.nn.BatchNorm1d(4)
        self.linear = torch.nn.Linear(5, 6, bias=False)
        self.bn_flat = torch.nn.BatchNorm1d(6, affine=False)

    def forward(self, x):
        y = self.bn3(self.conv(x)).flatten(2)[..., :5]  # (N, 4, 5)
        y = self.linear(self.bn1(y))  # (N, 4, 6)
        return self.bn_flat(y.mean(1))


MODELS = {
    "resnet18": lambda: (torchvision.models.resnet18(num_classes=10), torch.randn(2, 3, 32, 32)),
    "vit": lambda: (timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, num_classes=10),
                    torch.randn(2, 3, 32, 32)),
    "norms": lambda: (Norms(), torch.randn(2, 3, 2, 2, 2)),
}


@pytest.mark.parametrize(("name", "training"), itertools.product(MODELS, [False, True]))
def test_every_node_gets_the_value_torch_gives_it(name, training, monkeypatch):
    model, example = MODELS[name]()
    program = capture(model.train(training), example)
    expected = torch_values(program.module, program.example_inputs)
    taken = shortcuts_taken(monkeypatch)
    propagate_shapes(program.module, program.example_inputs)
    assert node_values(program.module) == expected
    assert taken, "no shortcut taken: the comparison proves nothing"


def layouts(shape):
    """The tensor in every layout a shortcut must tell apart: contiguous, channels-last (4-D), transposed."""
    yield torch.randn(shape)
    if len(shape) == 4:
        yield torch.randn(shape).to(memory_format=torch.channels_last)
    yield torch.randn(shape).transpose(0, -1).contiguous().transpose(0, -1)
    # contiguous, with any stride on its size-1 dims: torch keeps some of those, recomputes others
    strides = torch.empty(shape).stride()
    yield torch.empty_strided(shape, [1 if size == 1 else stride for size, stride in zip(shape, strides)]).normal_()


SHAPES = [(2, 3), (1, 3), (2, 3, 1), (1, 3, 1, 1), (2, 3, 1, 1), (1, 3, 4, 5), (2, 1, 4, 1), (2, 3, 2, 2, 2)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_batch_norm_in_any_layout_size_and_dtype(shape, dtype):
    compared = []
    for x, training, affine, params_dtype in itertools.product(layouts(shape), [False, True], [False, True],
                                                               [torch.float32, dtype]):
        channels = shape[1]
        params = [torch.rand(channels, dtype=params_dtype) + 0.5 if affine else None for _ in range(2)]
        stats = [torch.zeros(channels, dtype=params_dtype), torch.ones(channels, dtype=params_dtype)]
        compared.append(compare(aten.batch_norm.default, x.to(dtype), *params, *stats, training, 0.1, 1e-5, False))
    assert any(compared)


@pytest.mark.parametrize("shape", [(3, 5), (2, 4, 5), (1, 1, 5), (2, 3, 4, 5)])
def test_linear_in_any_layout_and_dtype(shape):
    compared = []
    for x, dtype, with_bias in itertools.product(layouts(shape), [torch.float32, torch.bfloat16], [False, True]):
        weight = torch.randn(7, shape[-1], dtype=dtype)
        compared.append(compare(aten.linear.default, x.to(dtype), weight,
                                torch.randn(7, dtype=dtype) if with_bias else None))
    assert any(compared)


@pytest.mark.parametrize("shape", [(3, 5), (2, 4, 5), (1, 1, 5), (2, 3, 4, 5)])
def test_layer_norm_in_any_layout_and_dtype(shape):
    compared = []
    for x, dtype, inner, affine in itertools.product(layouts(shape), [torch.float32, torch.bfloat16], [1, 2],
                                                     [False, True]):
        normalized = list(shape[-inner:])
        params = [torch.randn(normalized, dtype=torch.float32) if affine else None for _ in range(2)]
        compared.append(compare(aten.layer_norm.default, x.to(dtype), normalized, *params, 1e-5, False))
    assert any(compared)


def test_operands_of_the_wrong_size_fail_as_torch_fails():
    """A rewrite that left a batch norm or a linear with the wrong number of channels is an error, not a shape."""
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    with mode:
        x = mode.from_tensor(torch.randn(2, 4, 3, 3))
        assert shape_propagation._batch_norm(x, torch.ones(3), None, torch.zeros(4), torch.ones(4),
                                             False, 0.1, 1e-5, False) is None
        assert shape_propagation._batch_norm(x, torch.ones(1), None, torch.zeros(4), torch.ones(4),
                                             False, 0.1, 1e-5, False) is None
        assert shape_propagation._linear(x, torch.ones(7, 4)) is None
        assert shape_propagation._linear(x, torch.ones(7, 3), torch.ones(6)) is None
        assert shape_propagation._layer_norm(x, [4], torch.ones(4)) is None
        assert shape_propagation._layer_norm(x, [3], torch.ones(4)) is None
        assert shape_propagation._layer_norm(x, [3], torch.ones(3)) is not None
        assert shape_propagation._layer_norm(x, [3], torch.ones(3, dtype=torch.float16)) is None  # torch on CUDA
    program = capture(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4)).eval(),
                      torch.randn(1, 3, 2, 2))
    program.module.get_parameter("1.weight").data = torch.ones(3)  # the batch norm's: 4 channels come in
    with pytest.raises(RuntimeError):
        propagate_shapes(program.module, program.example_inputs)


def compare(op, *args) -> bool:
    """The shortcut's result, where it gives one, alike to the op's own under fake tensors; none where the op fails
    (a batch norm training on one value per channel divides by zero)."""
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    with mode, torch.no_grad():
        fake = mode.from_tensor(args[0])
        got = SHORTCUTS[op](fake, *args[1:])
        try:
            expected = op(fake, *args[1:])
        except ZeroDivisionError:
            assert got is None
            return False
    if got is not None:
        assert described(got) == described(expected), (args[0].shape, args[0].stride(), args[0].dtype)
    return got is not None
