"""The write-back's proof module by module (prunefx/interop/proof_by_module.py): a module that computes other values
than the pruned Program is found even where its error shrinks under the outputs' tolerance on the way out, and
then made from its subgraph; in-place operators that write into a module's output later are no such difference.
Oracles: the outputs with the small branch amplified alike in the Program and the module (which shows the error
at full size), and the Program's outputs on inputs the proof never saw."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torchvision.ops.misc import Conv2dNormActivation

from prunefx.graph import capture
from prunefx.interop.subgraph_module import SubgraphModule
from prunefx.interop.write_back import to_module
from prunefx.interop.write_back_proof import TOLERANCE, WriteBackError, verify_module
from prunefx.passes.remove_channels import remove_channels

pytestmark = pytest.mark.usefixtures("one_thread")


class Attention(nn.Module):
    """Its forward takes the scale from its head dim: written back with a pruned head dim, it would scale by the
    new one, where the Program keeps the dense scale."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x):
        batch, tokens, _ = x.shape
        q, k, v = self.qkv(x).reshape(batch, tokens, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        attention = (q @ k.transpose(-2, -1) * self.head_dim ** -0.5).softmax(-1)
        return self.proj((attention @ v).transpose(1, 2).reshape(batch, tokens, self.heads * self.head_dim))


class TupleAttention(Attention):
    """Returns its output in a tuple beside None, as a Hugging Face attention does without its weights."""

    def forward(self, x):
        return super().forward(x), None


class SmallBranch(nn.Module):
    """An attention added to a stream a thousand times larger: its errors reach the output a thousand times smaller."""

    def __init__(self, attention: type[Attention] = Attention):
        super().__init__()
        self.embed, self.attn, self.head = nn.Linear(16, 64), attention(64, 2), nn.Linear(64, 10)
        with torch.no_grad():
            self.attn.proj.weight.mul_(1e-3)
            self.attn.proj.bias.mul_(1e-3)

    def forward(self, x):
        x = self.embed(x)
        branch = self.attn(x)
        return self.head(x + (branch[0] if isinstance(branch, tuple) else branch))


def _small_branch(attention: type[Attention] = Attention):
    torch.manual_seed(0)
    model = SmallBranch(attention).eval()
    return model, capture(model, (torch.randn(1, 8, 16),), name="small branch").eval()


def _hidden_error_named(model: nn.Module, program, attention: type[Attention]) -> None:
    """The attention's queries scaled by 0.87 (a scale the Program does not hold): an error the outputs alone
    would pass, named by the proof; the right module passes."""
    wrong = copy.deepcopy(model)
    with torch.no_grad():
        wrong.attn.qkv.weight[:64].mul_(0.87)
        wrong.attn.qkv.bias[:64].mul_(0.87)
    x = program.example_inputs[0]
    with torch.no_grad():
        hidden = ((program(x) - wrong(x)).abs().max() / program(x).abs().max()).item()
    assert 0 < hidden < TOLERANCE  # what the outputs alone would pass
    verify_module(program, copy.deepcopy(model), program.name, "")
    with pytest.raises(WriteBackError, match=f"module 'attn' \\({attention.__name__}\\)") as raised:
        verify_module(program, wrong, program.name, "")
    assert raised.value.module_path == "attn"


@pytest.mark.parametrize("attention", [Attention, TupleAttention], ids=["tensor", "tuple"])
def test_a_module_whose_error_hides_at_the_outputs_is_named(attention):
    _hidden_error_named(*_small_branch(attention), attention)


class SharedBranch(SmallBranch):
    """One attention called twice, by a loop, on the stream it adds to: a shared block."""

    def forward(self, x):
        x = self.embed(x)
        for _ in range(2):
            x = x + self.attn(x)
        return self.head(x)


def test_a_shared_module_is_compared_at_every_call():
    torch.manual_seed(0)
    model = SharedBranch().eval()
    program = capture(model, (torch.randn(1, 8, 16),), name="shared branch").eval()
    _hidden_error_named(model, program, Attention)  # the right module passes at both calls, the wrong is named


def test_a_shared_module_its_pruned_head_dims_would_scale_otherwise_is_refused_not_written_back_wrong():
    torch.manual_seed(0)
    model = SharedBranch().eval()
    program = capture(model, (torch.randn(1, 8, 16),), name="shared branch").eval()
    remove_channels(program, config={"macs": 0.6, "heads": "dims", "strict": False})
    assert program.module.get_parameter("attn.qkv.weight").shape[0] < 3 * 64  # the head dims did shrink
    # its forward scales by the pruned head dim, the Program by the dense one; no subgraph stands in for a
    # module called twice
    with pytest.raises(WriteBackError, match="module 'attn' \\(Attention\\) returns values .* the model calls it 2 times"):
        to_module(program, model)


def test_a_module_found_wrong_inside_is_made_from_its_subgraph():
    model, program = _small_branch()
    remove_channels(program, config={"macs": 0.6, "heads": "dims", "strict": False})
    module = to_module(program, model)
    assert module.attn.qkv.weight.shape[0] < 3 * 64  # the head dims did shrink
    assert isinstance(module.attn, SubgraphModule)  # its own forward would take the pruned head dim's scale
    with torch.no_grad():  # the branch amplified alike in both: the oracle sees any error at full size
        for tensor in (*module.attn.proj.parameters(), *program.module.attn.proj.parameters()):
            tensor.mul_(1e3)
        x = torch.randn(3, 8, 16, generator=torch.Generator().manual_seed(4))
        expected = torch.cat([program(x[i:i + 1]) for i in range(3)])
        assert torch.allclose(module(x), expected, rtol=0, atol=1e-5 * expected.abs().max().item())


class InPlaceWrites(nn.Module):
    """In-place operators on a module's output: torchvision's Conv2dNormActivation ends in an in-place
    activation, and a residual added in place (MobileNetV3's `result += input`) writes into the projection's
    output after its call ended: the value compared is the one its call returned."""

    def __init__(self):
        super().__init__()
        self.stem = Conv2dNormActivation(3, 16, activation_layer=nn.Hardswish)
        self.project = Conv2dNormActivation(16, 16, activation_layer=None)
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        x = self.stem(x)
        y = self.project(x)
        y += x
        return self.head(y.mean((2, 3)))


def test_in_place_writes_after_a_call_are_no_difference():
    torch.manual_seed(0)
    model = InPlaceWrites().eval()
    program = capture(model, (torch.randn(1, 3, 16, 16),), name="in place").eval()
    remove_channels(program, config={"macs": 0.5, "strict": False})
    module = to_module(program, model)
    assert not any(isinstance(each, SubgraphModule) for each in module.modules())
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.allclose(module(x), program(x), rtol=0, atol=1e-5 * program(x).abs().max().item())


class Tail(nn.Module):
    def __init__(self):
        super().__init__()
        self.wide, self.narrow = nn.Linear(16, 32), nn.Linear(32, 16)

    def forward(self, x):
        return self.narrow(self.wide(x).relu())


class DroppedCall(nn.Module):
    """Its first call of `tail` computes nothing the output reads: the Program holds the second call only."""

    def __init__(self):
        super().__init__()
        self.tail, self.head = Tail(), nn.Linear(16, 4)

    def forward(self, x):
        _ = self.tail(x)
        return self.head(self.tail(x + 1))


class Positive(nn.Module):
    def forward(self, x):
        return x > 0


class MaskedBranch(nn.Module):
    """A module returning a boolean mask: compared exactly, not by magnitudes."""

    def __init__(self):
        super().__init__()
        self.positive, self.tail, self.head = Positive(), Tail(), nn.Linear(16, 4)

    def forward(self, x):
        return self.head(self.tail(x).masked_fill(self.positive(x), 0.0))


@pytest.mark.parametrize("model_class", [DroppedCall, MaskedBranch])
def test_patterns_of_the_user_s_code_are_no_difference(model_class):
    torch.manual_seed(0)
    model = model_class().eval()
    program = capture(model, (torch.randn(2, 16),), name=model_class.__name__).eval()
    remove_channels(program, config={"macs": 0.6, "strict": False})
    module = to_module(program, model)
    assert module.tail.wide.out_features < 32  # pruned
    x = torch.randn(2, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.allclose(module(x), program(x), rtol=0, atol=1e-5 * program(x).abs().max().item())
