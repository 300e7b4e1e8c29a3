"""to_module: the pruned Program written back into a copy of the user's module, on every model of
tests/test_channel_removal.py and every structural case of tests/test_structural_cases.py pruned to 0.5 of
the MACs. The checks here do not trust to_module's own verification: outputs are compared again on a third
input, the module's classes and names against the original's, its tensors against the Program's, and every
standard layer's size attributes against its own weights. A refusal is expected by name, with its reason."""

from __future__ import annotations

import collections
import importlib.util
import io
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.utils._pytree as pytree

from prunefx.graph import capture
from prunefx.graph.errors import PrunefxError
from prunefx.interop.module_resizers import _RESIZERS
from prunefx.interop.pruned_attention import PrunedMultiheadAttention
from prunefx.interop.subgraph_module import SubgraphModule
from prunefx.interop.write_back import to_module
from prunefx.models import build_model
from prunefx.passes.fold_batchnorm import fold_batchnorm
from prunefx.passes.remove_channels import remove_channels

pytestmark = pytest.mark.usefixtures("one_thread")


def _test_module(name: str):
    spec = importlib.util.spec_from_file_location(f"_write_back_{name}", Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


removal = _test_module("test_channel_removal")
cases = _test_module("test_structural_cases")
zoo = _test_module("test_prune_zoo")

# Refused, and why (none: a model whose own code spells a width that pruning changed, split([4, 12]) or
# view(b, 8, -1) in its forward, is made from its subgraph like any module).
CASE_REFUSALS: dict[str, str] = {}
MODEL_REFUSALS: dict[str, str] = {}  # models the write-back refuses, and words their one-line refusal must hold
# Main lane: the Fashion-MNIST models and resnet18; the rest of the zoo runs in its own lane.
MAIN_MODELS = {"prunefx:resnet20", "prunefx:mobilenetv2_small", "prunefx:vit_tiny_fmnist", "torchvision:resnet18"}


def model_case(reference: str):
    """(model, inputs) as tests/test_channel_removal.py builds them, zero-initialised heads randomised and weights
    redrawn where the outputs would not change with the input (either would make any comparison vacuous)."""
    torch.manual_seed(0)
    size = removal.IMAGE_SIZES.get(reference, 64)
    inputs = (torch.randn(1, removal.IN_CHANNELS.get(reference, 3), size, size),)
    model = build_model(reference, image_size=size).module.eval()
    if reference in removal.DEPTHS:
        model.blocks = model.blocks[:removal.DEPTHS[reference]]
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.is_floating_point() and not parameter.any():
                parameter.normal_(std=0.02)
    zoo.redraw_if_constant(model, inputs[0])
    return model, inputs


def structural_case(name: str):
    factory, make_inputs = cases.EXACT_CASES[name][:2] if name in cases.EXACT_CASES else cases.BLOCKED_CASES[name]
    torch.manual_seed(0)
    inputs = make_inputs()
    return factory().eval(), inputs if isinstance(inputs, tuple) else (inputs,)


def third_input_error(program, module, inputs) -> float:
    """The largest output difference on a third random input, relative to the largest output magnitude."""
    generator = torch.Generator().manual_seed(2)
    other = tuple(_another(x, generator) for x in inputs)
    with torch.no_grad():
        expected = [t for t in pytree.tree_leaves(program(*other)) if isinstance(t, torch.Tensor)]
        actual = [t for t in pytree.tree_leaves(module(*other)) if isinstance(t, torch.Tensor)]
    assert [t.shape for t in expected] == [t.shape for t in actual]
    scale = max(t.abs().max().item() for t in expected)
    assert scale > 0, "a zero output would make the check vacuous"
    with torch.no_grad():  # nor may the outputs be the same for every input (a head reading activations that vanish)
        given = [t for t in pytree.tree_leaves(program(*inputs)) if isinstance(t, torch.Tensor)]
    moved = max((g - e).abs().max().item() for g, e in zip(given, expected))
    assert moved > 1e-4 * scale, "outputs (nearly) constant would make the check vacuous"
    return max((e - a).abs().max().item() for e, a in zip(expected, actual)) / scale


def _another(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A random tensor like `x`: integers (token ids) drawn within the range of the given ones."""
    if x.is_floating_point():
        return torch.randn(x.shape, generator=generator)
    if x.dtype == torch.bool:
        return x
    return torch.randint(int(x.min()), int(x.max()) + 1, x.shape, generator=generator, dtype=x.dtype)


def _check_written_back(model, program, module, inputs) -> None:
    assert third_input_error(program, module, inputs) <= 1e-5
    assert [n for n, _ in module.named_modules()] == [n for n, _ in model.named_modules()]
    assert all(isinstance(mine, (type(theirs), SubgraphModule))  # or a block made from its subgraph
               for mine, theirs in zip(module.modules(), model.modules()))
    mine, state = dict(module.state_dict()), model.state_dict()
    for name, tensor in program.state_dict().items():
        if name not in state:  # a constant the forward builds (checked through the outputs)
            continue
        assert mine[name].shape == tensor.shape and torch.equal(mine[name], tensor), name
    for name, layer in module.named_modules():  # the size attributes agree with the layer's own weights
        if isinstance(layer, nn.Linear):
            assert (layer.out_features, layer.in_features) == tuple(layer.weight.shape), name
        elif isinstance(layer, nn.Conv2d) and not layer.transposed:
            assert layer.out_channels == layer.weight.shape[0], name
            assert layer.in_channels == layer.weight.shape[1] * layer.groups, name
        elif isinstance(layer, nn.modules.batchnorm._BatchNorm) and layer.running_mean is not None:
            assert layer.num_features == layer.running_mean.shape[0], name


def _prune_and_write_back(model, inputs, *, round_to: int, refusals: dict, name: str):
    program = capture(model, inputs, name=name).eval()
    dense = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        remove_channels(program, config={"macs": 0.5, "round_to": round_to, "strict": False})
    except PrunefxError as error:  # the blocked structural cases have nothing to prune
        assert "blocked by" in str(error)
        return
    if name in refusals:
        with pytest.raises(PrunefxError) as refused:
            to_module(program, model)
        message = str(refused.value)
        assert refusals[name] in message and "\n" not in message and name in message
        return
    module = to_module(program, model)
    _check_written_back(model, program, module, inputs)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in dense.items())  # the user's model is untouched


# Main lane: a success and a refusal of each kind; every other case runs in the zoo lane.
MAIN_CASES = {"concat", "split", "transposed_conv", "shared_weights", "multiple_inputs_outputs", "lstm",
              "rotary_fused_qkv", "custom_operator", "shared_under_several_names", "permuted_in_submodule",
              "multi_query_attention"}


@pytest.mark.parametrize("case", [pytest.param(c, marks=() if c in MAIN_CASES else pytest.mark.zoo)
                                  for c in sorted(cases.EXACT_CASES) + sorted(cases.BLOCKED_CASES)])
def test_structural_case_is_written_back_or_refused_by_name(case):
    _prune_and_write_back(*structural_case(case), round_to=1, refusals=CASE_REFUSALS, name=case)


def _model_marks(reference: str):
    if reference in MAIN_MODELS:
        return pytest.mark.slow
    return pytest.mark.zoo


@pytest.mark.parametrize("reference", [pytest.param(r, marks=_model_marks(r)) for r in removal.MODELS])
def test_model_is_written_back_or_refused_by_name(reference):
    _prune_and_write_back(*model_case(reference), round_to=8, refusals=MODEL_REFUSALS, name=reference)


class HalfWidth(nn.Module):
    """Its forward reads half its width from an attribute: a literal the generic matching cannot map (the
    rewritten size is twice the attribute)."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 1), nn.Linear(8, 4)
        self.half = 4

    def forward(self, x):
        y = torch.relu(self.a(x)).reshape(x.shape[0], 2 * self.half, -1).mean(-1)
        return self.b(y)


def test_a_registered_resizer_sets_what_matching_cannot(monkeypatch):
    torch.manual_seed(0)
    model, x = HalfWidth().eval(), torch.randn(2, 3, 4, 4)
    program = capture(model, x, name="HalfWidth").eval()
    remove_channels(program, config={"macs": 0.5, "round_to": 2, "strict": False})
    stand_in = to_module(program, model)  # its own code cannot: the model is made from its subgraph
    assert isinstance(stand_in, SubgraphModule) and stand_in.half == 4
    _check_written_back(model, program, stand_in, (x,))

    def resize(module, changes):
        module.half = module.a.weight.shape[0] // 2

    monkeypatch.setitem(_RESIZERS, HalfWidth, resize)
    module = to_module(program, model)
    assert type(module) is HalfWidth and module.half == program.state_dict()["a.weight"].shape[0] // 2 < 4
    _check_written_back(model, program, module, (x,))


class TinyAttention(nn.Module):
    """Heads and head dims read from attributes, attention computed with an explicit scale."""

    def __init__(self, dim: int = 16, heads: int = 4):
        super().__init__()
        self.num_heads, self.head_dim = heads, dim // heads
        self.scale = self.head_dim ** -0.5
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x):
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        attention = ((q * self.scale) @ k.transpose(-2, -1)).softmax(-1)
        return x + self.proj((attention @ v).transpose(1, 2).reshape(b, n, self.num_heads * self.head_dim))


@pytest.mark.parametrize("heads", ["whole", "dims"])
def test_attributes_that_fed_rewritten_literals_are_updated(heads):
    """Whole heads: num_heads changes, head_dim stays; head dims: head_dim changes, the dense scale stays.
    (3 heads of 8: the two attributes differ in value, which is how the generic matching tells them apart.)"""
    torch.manual_seed(0)
    model, x = TinyAttention(dim=24, heads=3).eval(), torch.randn(2, 5, 24)
    program = capture(model, x, name="TinyAttention").eval()
    remove_channels(program, config={"macs": 0.6, "round_to": 1, "strict": False, "heads": heads})
    module = to_module(program, model)
    inner = program.state_dict()["proj.weight"].shape[1]
    assert inner < 24 and module.num_heads * module.head_dim == inner
    assert (module.head_dim == 8) == (heads == "whole")
    assert module.scale == model.scale
    _check_written_back(model, program, module, (x,))


def test_a_program_with_tensors_the_model_lacks_is_refused():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
    model[1].running_var.uniform_(0.5, 2.0)  # a batch norm that is no identity once folded
    program = capture(model, torch.randn(1, 3, 8, 8), name="convbn").eval()
    program = fold_batchnorm(program, config={}).program
    with pytest.raises(PrunefxError, match="fold_batchnorm"):
        to_module(program, model)


def test_the_module_comes_back_in_the_model_s_training_mode():
    model, inputs = structural_case("concat")
    program = capture(model, inputs, name="concat").eval()
    remove_channels(program, config={"macs": 0.5, "round_to": 1, "strict": False})
    assert not to_module(program, model).training
    assert to_module(program, model.train()).training and model.training


class Encoder(nn.Module):
    """nn.MultiheadAttention inside torch's own TransformerEncoderLayer."""

    def __init__(self):
        super().__init__()
        self.embed, self.head = nn.Linear(8, 32), nn.Linear(32, 3)
        self.layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)

    def forward(self, x):
        return self.head(self.layer(self.embed(x)).mean(1))


def test_multihead_attention_with_uniform_widths_is_written_back():
    torch.manual_seed(0)
    model, x = Encoder().eval(), torch.randn(2, 5, 8)
    program = capture(model, x, name="Encoder").eval()
    remove_channels(program, config={"channels": 0.5, "ranking": "uniform", "round_to": 2})
    attention = to_module(program, model).layer.self_attn
    assert (attention.embed_dim, attention.num_heads, attention.head_dim) == (16, 4, 4)
    assert third_input_error(program, to_module(program, model), (x,)) <= 1e-5
    # the dense scale 1/sqrt(8) is carried by the query rows: MultiheadAttention scales by 1/sqrt(4)
    weight = program.state_dict()["layer.self_attn.in_proj_weight"]
    assert torch.allclose(attention.in_proj_weight[:16], weight[:16] * 0.5 ** 0.5)
    assert torch.equal(attention.in_proj_weight[16:], weight[16:])


def test_multihead_attention_with_heads_apart_from_its_input_is_written_back():
    torch.manual_seed(0)
    model, x = Encoder().eval(), torch.randn(2, 5, 8)
    program = capture(model, x, name="Encoder").eval()
    remove_channels(program, config={"macs": 0.5, "round_to": 2, "strict": False})
    module = to_module(program, model)
    attention = module.layer.self_attn
    assert isinstance(attention, PrunedMultiheadAttention)
    assert attention.embed_dim != attention.num_heads * attention.head_dim  # what MultiheadAttention cannot hold
    assert attention.scale_head_dim == 8  # the dense head dim's scale, as the program keeps it
    _check_written_back(model, program, module, (x,))
    buffer = io.BytesIO()  # module.pt: it saves and loads as it is
    torch.save(module, buffer)
    buffer.seek(0)
    with torch.no_grad():
        assert torch.equal(torch.load(buffer, weights_only=False)(x), module(x))
    module.train()  # and it trains: gradients reach every projection
    module(x).sum().backward()
    assert all(p.grad is not None and p.grad.any() for p in attention.parameters())


def test_multihead_attention_it_cannot_hold_is_refused_by_name():
    torch.manual_seed(0)
    model, x = Encoder().eval(), torch.randn(2, 5, 8)
    model.layer.self_attn = nn.MultiheadAttention(32, 4, add_bias_kv=True, batch_first=True)
    program = capture(model, x, name="Encoder").eval()
    remove_channels(program, config={"macs": 0.5, "round_to": 2, "strict": False})
    with pytest.raises(PrunefxError, match=r"Encoder back: module 'layer.self_attn': nn.MultiheadAttention with input "
                                           r"width \d+ and heads of width \d+ in all: .*key/value bias"):
        to_module(program, model)


class Masked(nn.Module):
    """A constant built in forward (as torchvision's shifted-window mask is): no state of the model."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.b(torch.relu(self.a(x))) * torch.tensor([[1.0, 0.0, 1.0, 1.0]]).to(x.device)


def test_constants_the_forward_builds_are_built_again_not_refused():
    torch.manual_seed(0)
    model, x = Masked().eval(), torch.randn(2, 3, 4, 4)
    program = capture(model, x, name="Masked").eval()
    assert any("lifted_tensor" in str(n.target) for n in program.graph.nodes if n.op == "get_attr")
    remove_channels(program, config={"macs": 0.5, "round_to": 2, "strict": False})
    module = to_module(program, model)
    assert module.a.out_channels < 8
    _check_written_back(model, program, module, (x,))


class PlainShift(nn.Module):
    """A per-channel shift kept as a plain tensor attribute (no register_buffer), on the channels pruning cuts."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 16, 3), nn.Conv2d(16, 8, 3)
        self.shift = torch.randn(1, 16, 1, 1)

    def forward(self, x):
        return self.b(torch.relu(self.a(x) + self.shift))


def test_a_plain_tensor_attribute_is_cut_and_written_back_as_an_attribute():
    torch.manual_seed(0)
    model, x = PlainShift().eval(), torch.randn(1, 3, 16, 16)
    program = capture(model, x, name="PlainShift").eval()
    remove_channels(program, config={"macs": 0.5, "round_to": 2})
    module = to_module(program, model)
    kept = module.a.out_channels
    assert kept < 16 and type(module) is PlainShift and "shift" not in dict(module.named_buffers())
    assert module.shift.shape == (1, kept, 1, 1) and model.shift.shape == (1, 16, 1, 1)
    _check_written_back(model, program, module, (x,))


def test_a_program_on_another_device_is_written_back_from_a_copy_on_the_models(monkeypatch):
    """Pruned on a GPU, the Program's tensors are on cuda and the user's model on the CPU: the dense model's capture
    ran the CPU copy on cuda inputs, refused as "does not capture". A copy of the Program is moved to the model's
    device (here the Program reads as on cuda:0; the GPU test below moves one for real); the user's is left."""
    write_back = importlib.import_module("prunefx.interop.write_back")
    torch.manual_seed(0)
    model, x = PlainShift().eval(), torch.randn(1, 3, 16, 16)
    program = capture(model, x, name="PlainShift").eval()
    remove_channels(program, config={"macs": 0.5, "round_to": 2})
    real_device, moved = write_back.module_device, []
    monkeypatch.setattr(write_back, "module_device", lambda module: torch.device("cuda", 0)
                        if module is program.module else real_device(module))
    monkeypatch.setattr(write_back, "move_program", lambda copy, device: moved.append((copy, device)) or copy)
    module = to_module(program, model)
    assert len(moved) == 1 and moved[0][0] is not program and moved[0][1] == torch.device("cpu")
    _check_written_back(model, program, module, (x,))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU with CUDA")
def test_a_program_pruned_on_a_gpu_writes_back_into_the_model_on_the_cpu(monkeypatch):
    from prunefx.graph.placement import move_program

    # cuDNN's default TF32 rounds to 10 bits, far past the float32 tolerance the CPU comparison holds
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    torch.manual_seed(0)
    model, x = PlainShift().eval(), torch.randn(1, 3, 16, 16)
    program = move_program(capture(model, x, name="PlainShift").eval(), "cuda")
    remove_channels(program, config={"macs": 0.5, "round_to": 2})
    module = to_module(program, model)
    assert all(tensor.device.type == "cpu" for tensor in module.state_dict().values())
    assert program.example_inputs[0].is_cuda
    torch.testing.assert_close(module(x), program(x.cuda()).cpu(), rtol=1e-4, atol=1e-5)


@pytest.mark.zoo
def test_vit_b_16_with_uniform_widths_is_written_back():
    # nn.MultiheadAttention holds a pruned program when its heads keep its input width: uniform ranking
    reference = "torchvision:vit_b_16"
    model, inputs = model_case(reference)
    program = capture(model, inputs, name=reference).eval()
    remove_channels(program, config={"channels": 0.5, "ranking": "uniform"})
    module = to_module(program, model)
    attention = module.encoder.layers.encoder_layer_0.self_attention
    assert (attention.embed_dim, attention.num_heads, attention.head_dim) == (384, 12, 32)
    assert third_input_error(program, module, inputs) <= 1e-5


def test_each_layer_of_the_written_back_module_keeps_the_mode_it_has_in_the_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.BatchNorm2d(8),
                          nn.Dropout(0.1)).train()
    model[1].eval()  # frozen, as fine-tuning recipes do
    program = capture(model, torch.randn(2, 3, 12, 12))
    remove_channels(program, config={"macs": 0.6, "importance": "l2", "round_to": 2, "strict": False})
    module = to_module(program, model)
    assert module[0].out_channels < 8
    assert {name: m.training for name, m in module.named_modules()} == \
        {name: m.training for name, m in model.named_modules()}


class Splitter(nn.Module):
    """Channels split at sizes kept in a list, each part to its own depthwise conv (CoaT's ConvRelPosEnc)."""

    def __init__(self, splits=(4, 6, 6)):
        super().__init__()
        self.splits = list(splits)
        self.branches = nn.ModuleList(nn.Conv2d(s, s, 3, padding=1, groups=s) for s in self.splits)

    def forward(self, x):
        return torch.cat([branch(part) for branch, part in zip(self.branches, torch.split(x, self.splits, dim=1))], 1)


class Halves(nn.Module):
    """Two parts of 8 (`split(8)`), which pruning makes unequal: only its subgraph can stand in."""

    def __init__(self):
        super().__init__()
        self.left, self.right = nn.Conv2d(8, 8, 1), nn.Conv2d(8, 8, 1)

    def forward(self, x):
        left, right = x.split(8, dim=1)
        return torch.cat([self.left(left), self.right(right)], 1)


class SharedPart(nn.Module):
    """A module registered first at the top and called through a block that holds it under a second name."""

    def __init__(self, part: nn.Module):
        super().__init__()
        self.shared = part
        self.stem, self.head = nn.Conv2d(3, 16, 1), nn.Conv2d(16, 4, 1)
        self.block = nn.Sequential(self.stem, part)

    def forward(self, x):
        return self.head(self.block(x))


def _pruned_shared(part: type[nn.Module]):
    torch.manual_seed(0)
    model, x = SharedPart(part()).eval(), torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        model.stem.weight[4:10] *= 0.01  # the channels of the first 6-wide part (or the first half) weigh least
    program = capture(model, x).eval()
    remove_channels(program, config={"macs": 0.6, "round_to": 1, "strict": False})
    return model, program, to_module(program, model), x


def test_a_list_of_sizes_is_set_whole_on_a_module_shared_under_two_names():
    # the two 6-wide parts pruned to different widths: size by size, the list could not say which 6 became which
    model, program, module, x = _pruned_shared(Splitter)
    splits = module.shared.splits
    assert splits[1] != splits[2] and sum(splits) < 16 and splits == [b.in_channels for b in module.shared.branches]
    assert module.block[1] is module.shared
    _check_written_back(model, program, module, (x,))


def test_a_shared_module_made_from_its_subgraph_stays_shared():
    model, program, module, x = _pruned_shared(Halves)
    assert isinstance(module.shared, SubgraphModule) and module.block[1] is module.shared
    _check_written_back(model, program, module, (x,))


def test_the_hooks_of_a_module_made_from_its_subgraph_still_run():
    torch.manual_seed(0)
    model, x = SharedPart(Halves()).eval(), torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        model.stem.weight[4:10] *= 0.01
    features = []
    model.shared.register_forward_hook(lambda layer, args, output: features.append(output.shape))
    program = capture(model, x).eval()
    remove_channels(program, config={"macs": 0.6, "round_to": 1, "strict": False})
    module = to_module(program, model)
    assert isinstance(module.shared, SubgraphModule) and features == []  # the user's list left as found
    with torch.no_grad():
        module(x)
    assert features == [(2, module.shared.left.out_channels + module.shared.right.out_channels, 8, 8)]


class Table(nn.Module):
    """A module its parent runs through a method (as timm's RelPosMlp.get_bias), never by its forward: the
    sizes its code spells land in the parent's call."""

    def __init__(self, width: int):
        super().__init__()
        self.width, self.mlp = width, nn.Linear(2, width)
        self.register_buffer("coords", torch.randn(9, 2))
        self.gain = nn.Parameter(torch.ones(()))

    def bias(self) -> torch.Tensor:
        return self.mlp(self.coords).view(3, 3, self.width).permute(2, 0, 1) * self.gain


class WithTable(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem, self.table, self.head = nn.Conv2d(3, 8, 1), Table(8), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.head(torch.relu(self.stem(x) + self.table.bias()))


def test_a_module_run_through_a_method_takes_the_sizes_its_code_spelled():
    torch.manual_seed(0)
    model, x = WithTable().eval(), torch.randn(2, 3, 3, 3)
    program = capture(model, x).eval()
    remove_channels(program, config={"macs": 0.6, "round_to": 1, "strict": False})
    module = to_module(program, model)
    assert module.table.width == module.stem.out_channels < 8
    assert not any(isinstance(m, SubgraphModule) for m in module.modules())
    _check_written_back(model, program, module, (x,))


Splits = collections.namedtuple("Splits", "a b c")


class NamedSplitter(Splitter):
    """Split sizes kept in a namedtuple."""

    def __init__(self):
        super().__init__()
        self.splits = Splits(*self.splits)


def test_split_sizes_in_a_namedtuple_are_set_whole():
    model, program, module, x = _pruned_shared(NamedSplitter)
    splits = module.shared.splits
    assert type(splits) is Splits and splits.b != splits.c and list(splits) == [b.in_channels for b in module.shared.branches]
    _check_written_back(model, program, module, (x,))


class Gate(nn.Module):
    def __init__(self):
        super().__init__()
        self.g, self.channels, self.spare = nn.Parameter(torch.rand(8) + 0.5), 8, 12  # spare: read by no forward

    def forward(self, x):
        return x * self.g.view(1, self.channels, 1, 1)


class ReadsItsChild(nn.Module):
    """The parent reads its child's parameter itself, and holds a size of its own (12) that pruning changes."""

    def __init__(self):
        super().__init__()
        self.stem, self.gate, self.other, self.head = nn.Conv2d(3, 8, 1), Gate(), nn.Conv2d(3, 12, 1), nn.Conv2d(20, 4, 1)
        self.width = 12

    def forward(self, x):
        b = self.other(x)
        b = b.reshape(b.shape[0], self.width, -1).softmax(-1).reshape(b.shape)
        return self.head(torch.cat([self.gate(self.stem(x)), b], 1)) * self.gate.g.mean()


def test_a_child_whose_forward_runs_keeps_what_only_its_parent_s_code_spelled():
    # gate runs its own forward: the parent's rewritten 12 is none of its attributes', even though the parent
    # reads its tensor (a method's code runs in its parent's call only for a module whose forward never runs)
    torch.manual_seed(0)
    model, x = ReadsItsChild().eval(), torch.randn(2, 3, 4, 4)
    with torch.no_grad():
        model.other.weight[:3] *= 0.3
    program = capture(model, x).eval()
    remove_channels(program, config={"macs": 0.6, "round_to": 1, "strict": False})
    module = to_module(program, model)
    assert module.width == module.other.out_channels < 12 and module.gate.spare == 12
    _check_written_back(model, program, module, (x,))


class Scaled(nn.Module):
    """Two parts of 8 (`split(8)`, made unequal by pruning), scaled by a table its caller passes in."""

    def __init__(self):
        super().__init__()
        self.left, self.right = nn.Conv2d(8, 8, 1), nn.Conv2d(8, 8, 1)

    def forward(self, x, table=None, extras=()):
        left, right = x.split(8, dim=1)
        return torch.cat([self.left(left), self.right(right)], 1) * table + sum(extras)


class PassesATable(nn.Module):
    """The model's own buffer handed to a child as an argument (timm's EVA passes its rotary table to attention)."""

    def __init__(self):
        super().__init__()
        self.stem, self.part, self.head = nn.Conv2d(3, 16, 1), Scaled(), nn.Conv2d(16, 4, 1)
        self.register_buffer("table", torch.rand(1, 16, 1, 1) + 0.5)

    def forward(self, x):
        return self.head(self.part(self.stem(x), table=self.table))


def test_a_subgraph_reads_the_tensor_its_caller_passes_in():
    torch.manual_seed(0)
    model, x = PassesATable().eval(), torch.randn(2, 3, 4, 4)
    with torch.no_grad():
        model.stem.weight[4:8] *= 0.01  # the first part weighs least: the parts come apart
    program = capture(model, x).eval()
    remove_channels(program, config={"macs": 0.6, "round_to": 1, "strict": False})
    module = to_module(program, model)
    assert isinstance(module.part, SubgraphModule)
    _check_written_back(model, program, module, (x,))
    features = module.stem(x)
    with torch.no_grad():  # it reads the table from the call, as the module's own code does
        torch.testing.assert_close(module.part(features, table=2 * module.table),
                                   2 * module.part(features, table=module.table))
        with pytest.raises(Exception, match="reads 'table' as a tensor of shape .* passes one of shape \\[1, 3"):
            module.part(features, table=module.table[:, :3])
        with pytest.raises(Exception, match="reads 'table', which its caller does not pass"):
            module.part(features)
        with pytest.raises(Exception, match="reads 2 tensors, and its caller passes more"):  # a list's too
            module.part(features, table=module.table, extras=[torch.ones(())])


class IgnoresItsTable(Scaled):
    """Scales by the table it reaches through a reference of its own, whatever its caller passes."""

    def forward(self, x, table=None, extras=()):
        left, right = x.split(8, dim=1)
        return torch.cat([self.left(left), self.right(right)], 1) * self.source[0].table


def test_a_tensor_passed_in_that_the_module_does_not_read_is_not_bound_to_it():
    # the caller passes the very tensor the module reads otherwise: the argument would stand in for it, and a
    # later call with another table would change what the module computes
    torch.manual_seed(0)
    model, x = PassesATable().eval(), torch.randn(2, 3, 4, 4)
    model.part = IgnoresItsTable()
    model.part.source = (model,)  # a reference, not a child
    with torch.no_grad():
        model.stem.weight[4:8] *= 0.01
    program = capture(model, x).eval()
    remove_channels(program, config={"macs": 0.6, "round_to": 1, "strict": False})
    with pytest.raises(PrunefxError, match="module 'part' is not made from its subgraph: its own code reads 'table'"):
        to_module(program, model)


class PassesATableThenNorms(PassesATable):
    def __init__(self):
        super().__init__()
        self.norm = nn.BatchNorm1d(4)

    def forward(self, x):
        return self.norm(super().forward(x).mean((2, 3)))


def test_the_call_that_finds_a_passed_tensor_runs_in_eval_as_the_proof():
    # a model handed over in training mode, captured in eval at batch 1: batch norm cannot train on one image
    torch.manual_seed(0)
    model, x = PassesATableThenNorms().eval(), torch.randn(1, 3, 4, 4)
    with torch.no_grad():
        model.stem.weight[4:8] *= 0.01
    program = capture(model, x).eval()
    remove_channels(program, config={"macs": 0.6, "round_to": 1, "strict": False})
    module = to_module(program, model.train())
    assert isinstance(module.part, SubgraphModule) and module.training and model.training
    with torch.no_grad():
        torch.testing.assert_close(module.eval()(x), program(x), rtol=1e-5, atol=1e-5)
