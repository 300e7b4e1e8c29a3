"""Property tests for dependency analysis + channel removal on randomly composed small networks.

Hypothesis draws a network as a list of block specs (conv/BN/ReLU, residual add, concat, split into
branches, attention over the spatial tokens, depthwise and grouped conv, squeeze-excitation, channel
shuffle, spatial gate, pooling) followed by a flatten or pooling + linear head, captures it, and then
draws channels to remove:

* exact groups: zero the weights of a non-empty strict subset of channels of some exact groups,
  remove them; the program verifies and its outputs do not move beyond float tolerance;
* inexact groups: removing a strict subset of their channels still gives a valid program with the
  same output shapes.

A failure prints the network spec (`Net(...)`), which `build_network` turns back into the model.
CI runs a fixed sequence of examples; `PRUNEFX_PROPERTY_EXAMPLES=500 pytest tests/test_channel_properties.py`
runs that many random ones (`--hypothesis-show-statistics` shows which blocks were drawn).
"""

from __future__ import annotations

import math
import os
from typing import NamedTuple

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torch.utils._pytree as pytree
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from torch import nn

from prunefx.graph import capture, verify
from prunefx.graph.channels.groups import find_channel_groups
from prunefx.graph.channels.removal import remove_classes

# ------------------------------------------------------------------------------------------------
# Block specs: plain tuples, so that a failing example prints as a readable, rebuildable network.


class Conv(NamedTuple):
    """conv(k, stride) -> norm ('bn', 'gn': group norm, 'none') -> ReLU."""
    out: int
    kernel: int = 3
    stride: int = 1
    norm: str = "bn"


class Grouped(NamedTuple):
    """grouped conv -> BN -> ReLU."""
    out: int
    groups: int
    kernel: int = 3


class Depthwise(NamedTuple):
    """depthwise conv (channel multiplier) -> BN -> ReLU."""
    multiplier: int = 1
    kernel: int = 3
    stride: int = 1


class Residual(NamedTuple):
    """x + BN(conv(ReLU(BN(conv(x))))) -> ReLU, the inner width being `mid`."""
    mid: int


class Concat(NamedTuple):
    """cat([cbr(x, a), cbr(x, b)]) on channels."""
    a: int
    b: int


class Split(NamedTuple):
    """Split channels into two pieces (`how`: 'chunk', 'split' (equal sizes), 'sizes' (first, rest)),
    run a conv branch on each and merge them (`merge`: 'add', 'cat', or 'identity': cat the first
    piece untouched with the second branch)."""
    first: int
    how: str
    merge: str
    out_a: int
    out_b: int


class Attention(NamedTuple):
    """Multi-head attention over the H*W tokens with channels as features: optional pre layer norm,
    q/k/v projections ('separate' linears, or one 'fused' linear split by 'unbind' or 'chunk'),
    'sdpa' or 'matmul' (softmax(q k^T * scale) v), optional layer norm over the merged heads
    (`merged_norm`), output projection, optional residual."""
    heads: int
    qk_dim: int
    v_dim: int
    qkv: str = "separate"
    kernel: str = "sdpa"
    norm: bool = False
    residual: bool = True
    merged_norm: bool = False


class Shuffle(NamedTuple):
    """Channel shuffle: view as (groups, C / groups), transpose, flatten back."""
    groups: int


class SqueezeExcite(NamedTuple):
    """x * sigmoid(fc(relu(fc(pool(x))))), the fcs being 1x1 'conv's or 'linear's."""
    hidden: int
    impl: str = "conv"


class SpatialGate(NamedTuple):
    """x * sigmoid(conv(reduce over channels of x)) with reduce 'mean' or 'amax' (inexact)."""
    reduce: str = "mean"


class Pool(NamedTuple):
    """2x2 'max' or 'avg' pooling."""
    kind: str = "max"


class Head(NamedTuple):
    """'flatten' (C*H*W features) or 'pool' (global average) -> linear to `classes`."""
    kind: str
    classes: int


class Net(NamedTuple):
    batch: int
    size: int
    stem: int
    blocks: tuple
    head: Head


# ------------------------------------------------------------------------------------------------
# Modules


def _randomise_norms(module: nn.Module, generator: torch.Generator) -> None:
    """Non-trivial batch/group norm parameters and statistics, so norms are not identities."""
    for m in module.modules():
        if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm)):
            with torch.no_grad():
                m.weight.copy_(torch.rand(m.weight.shape, generator=generator) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=generator) * 0.1)
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=generator) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=generator) + 0.5)


def _cbr(c_in: int, c_out: int, kernel: int = 3, stride: int = 1, groups: int = 1, norm: str = "bn"):
    layers = [nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=norm == "none")]
    if norm == "bn":
        layers.append(nn.BatchNorm2d(c_out))
    elif norm == "gn":
        layers.append(nn.GroupNorm(2 if c_out % 2 == 0 else 1, c_out))
    layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class ResidualBlock(nn.Module):
    def __init__(self, c: int, spec: Residual):
        super().__init__()
        self.inner = nn.Sequential(_cbr(c, spec.mid), nn.Conv2d(spec.mid, c, 3, 1, 1, bias=False),
                                   nn.BatchNorm2d(c))

    def forward(self, x):
        return F.relu(x + self.inner(x))


class ConcatBlock(nn.Module):
    def __init__(self, c: int, spec: Concat):
        super().__init__()
        self.a, self.b = _cbr(c, spec.a, 1), _cbr(c, spec.b, 3)

    def forward(self, x):
        return torch.cat([self.a(x), self.b(x)], dim=1)


class SplitBlock(nn.Module):
    def __init__(self, c: int, spec: Split):
        super().__init__()
        self.spec, self.c = spec, c
        second = c - spec.first
        self.a = None if spec.merge == "identity" else _cbr(spec.first, spec.out_a, 1)
        self.b = _cbr(second, spec.out_b, 3)

    def forward(self, x):
        if self.spec.how == "chunk":
            x1, x2 = x.chunk(2, dim=1)
        elif self.spec.how == "split":
            x1, x2 = torch.split(x, self.spec.first, dim=1)
        else:
            x1, x2 = torch.split(x, [self.spec.first, self.c - self.spec.first], dim=1)
        y2 = self.b(x2)
        if self.spec.merge == "identity":
            return torch.cat([x1, y2], dim=1)
        y1 = self.a(x1)
        return y1 + y2 if self.spec.merge == "add" else torch.cat([y1, y2], dim=1)


class AttentionBlock(nn.Module):
    def __init__(self, c: int, spec: Attention):
        super().__init__()
        self.spec = spec
        h, dk, dv = spec.heads, spec.qk_dim, spec.v_dim
        self.norm = nn.LayerNorm(c) if spec.norm else None
        if spec.qkv == "separate":
            self.q, self.k, self.v = nn.Linear(c, h * dk), nn.Linear(c, h * dk), nn.Linear(c, h * dv)
        else:
            self.qkv = nn.Linear(c, 3 * h * dk)
        self.merged_norm = nn.LayerNorm(h * dv) if spec.merged_norm else None
        self.proj = nn.Linear(h * dv, c)

    def forward(self, x):
        b, c, height, width = x.shape
        n, spec = height * width, self.spec
        h, dk, dv = spec.heads, spec.qk_dim, spec.v_dim
        tokens = x.flatten(2).transpose(1, 2)  # [B, N, C]
        y = self.norm(tokens) if self.norm is not None else tokens
        if spec.qkv == "separate":
            q = self.q(y).reshape(b, n, h, dk).transpose(1, 2)
            k = self.k(y).reshape(b, n, h, dk).transpose(1, 2)
            v = self.v(y).reshape(b, n, h, dv).transpose(1, 2)
        elif spec.qkv == "unbind":
            q, k, v = self.qkv(y).reshape(b, n, 3, h, dk).permute(2, 0, 3, 1, 4).unbind(0)
        else:  # "chunk"
            q, k, v = (t.reshape(b, n, h, dk).transpose(1, 2) for t in self.qkv(y).chunk(3, dim=-1))
        if spec.kernel == "sdpa":
            out = F.scaled_dot_product_attention(q, k, v)
        else:
            attention = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(dk))
            out = attention.softmax(dim=-1) @ v
        out = out.transpose(1, 2).reshape(b, n, h * dv)
        if self.merged_norm is not None:
            out = self.merged_norm(out)
        out = self.proj(out)
        if spec.residual:
            out = out + tokens
        return out.transpose(1, 2).reshape(b, c, height, width)


class ShuffleBlock(nn.Module):
    def __init__(self, c: int, spec: Shuffle):
        super().__init__()
        self.groups = spec.groups

    def forward(self, x):
        b, c, height, width = x.shape
        x = x.view(b, self.groups, c // self.groups, height, width).transpose(1, 2)
        return x.reshape(b, c, height, width)


class SqueezeExciteBlock(nn.Module):
    def __init__(self, c: int, spec: SqueezeExcite):
        super().__init__()
        self.impl = spec.impl
        if spec.impl == "conv":
            self.down, self.up = nn.Conv2d(c, spec.hidden, 1), nn.Conv2d(spec.hidden, c, 1)
        else:
            self.down, self.up = nn.Linear(c, spec.hidden), nn.Linear(spec.hidden, c)

    def forward(self, x):
        if self.impl == "conv":
            gate = self.up(F.relu(self.down(x.mean((2, 3), keepdim=True))))
        else:
            pooled = F.adaptive_avg_pool2d(x, 1).flatten(1)
            gate = self.up(F.relu(self.down(pooled))).view(x.shape[0], x.shape[1], 1, 1)
        return x * torch.sigmoid(gate)


class SpatialGateBlock(nn.Module):
    def __init__(self, c: int, spec: SpatialGate):
        super().__init__()
        self.reduce = spec.reduce
        self.conv = nn.Conv2d(1, 1, 3, 1, 1)

    def forward(self, x):
        reduced = x.mean(1, keepdim=True) if self.reduce == "mean" else x.amax(1, keepdim=True)
        return x * torch.sigmoid(self.conv(reduced))


class HeadBlock(nn.Module):
    def __init__(self, c: int, size: int, spec: Head):
        super().__init__()
        self.kind = spec.kind
        self.fc = nn.Linear(c * size * size if spec.kind == "flatten" else c, spec.classes)

    def forward(self, x):
        if self.kind == "pool":
            x = F.adaptive_avg_pool2d(x, 1)
        return self.fc(x.flatten(1))


def _block(c: int, spec) -> tuple[nn.Module, int]:
    """The module for `spec` on `c` input channels, and its number of output channels."""
    if isinstance(spec, Conv):
        return _cbr(c, spec.out, spec.kernel, spec.stride, norm=spec.norm), spec.out
    if isinstance(spec, Grouped):
        return _cbr(c, spec.out, spec.kernel, groups=spec.groups), spec.out
    if isinstance(spec, Depthwise):
        return _cbr(c, c * spec.multiplier, spec.kernel, spec.stride, groups=c), c * spec.multiplier
    if isinstance(spec, Residual):
        return ResidualBlock(c, spec), c
    if isinstance(spec, Concat):
        return ConcatBlock(c, spec), spec.a + spec.b
    if isinstance(spec, Split):
        out = {"add": spec.out_b, "cat": spec.out_a + spec.out_b, "identity": spec.first + spec.out_b}
        return SplitBlock(c, spec), out[spec.merge]
    if isinstance(spec, Attention):
        return AttentionBlock(c, spec), c
    if isinstance(spec, SqueezeExcite):
        return SqueezeExciteBlock(c, spec), c
    if isinstance(spec, Shuffle):
        return ShuffleBlock(c, spec), c
    if isinstance(spec, SpatialGate):
        return SpatialGateBlock(c, spec), c
    if isinstance(spec, Pool):
        return (nn.MaxPool2d(2) if spec.kind == "max" else nn.AvgPool2d(2)), c
    raise TypeError(spec)


def _spatial_after(size: int, spec) -> int:
    if isinstance(spec, Pool):
        return size // 2
    stride = getattr(spec, "stride", 1)
    return (size - 1) // stride + 1  # padding k // 2 with odd kernels


def build_network(net: Net) -> tuple[nn.Module, torch.Tensor]:
    """The eval-mode model described by `net` and an input for it (seeded, reproducible)."""
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    layers, c, size = [_cbr(3, net.stem)], net.stem, net.size
    for spec in net.blocks:
        module, c = _block(c, spec)
        size = _spatial_after(size, spec)
        layers.append(module)
    layers.append(HeadBlock(c, size, net.head))
    model = nn.Sequential(*layers)
    _randomise_norms(model, generator)
    x = torch.randn(net.batch, 3, net.size, net.size, generator=generator)
    return model.eval(), x


# ------------------------------------------------------------------------------------------------
# Strategies

CHANNELS = st.integers(4, 16)
EXACT_KINDS = ["conv", "grouped", "depthwise", "residual", "concat", "split", "attention", "se", "pool",
               "shuffle"]
INEXACT_KINDS = ["conv_gn", "attention_ln", "spatial_gate"]


def _divisors(n: int) -> list[int]:
    return [d for d in range(2, n + 1) if n % d == 0]


@st.composite
def block_spec(draw, c: int, size: int, kinds: list[str]):
    kind = draw(st.sampled_from(kinds))
    if (kind == "grouped" and not _divisors(c)) or (kind == "shuffle" and not _divisors(c)[:-1]):
        kind = "conv"
    if kind == "pool" and size < 2:
        kind = "residual"
    if kind == "conv":
        stride = draw(st.sampled_from([1, 2])) if size >= 2 else 1
        return Conv(draw(CHANNELS), draw(st.sampled_from([1, 3])), stride, draw(st.sampled_from(["bn", "none"])))
    if kind == "conv_gn":
        return Conv(draw(CHANNELS), draw(st.sampled_from([1, 3])), 1, "gn")
    if kind == "grouped":
        groups = draw(st.sampled_from(_divisors(c)))
        out = groups * draw(st.integers(max(1, -(-4 // groups)), max(1, 16 // groups)))
        return Grouped(out, groups, draw(st.sampled_from([1, 3])))
    if kind == "depthwise":
        stride = draw(st.sampled_from([1, 2])) if size >= 2 else 1
        return Depthwise(draw(st.sampled_from([1, 1, 2])), draw(st.sampled_from([3, 5])), stride)
    if kind == "residual":
        return Residual(draw(CHANNELS))
    if kind == "concat":
        return Concat(draw(st.integers(2, 8)), draw(st.integers(2, 8)))
    if kind == "split":
        how = draw(st.sampled_from(["chunk", "split", "sizes"]))
        first = c // 2 if how != "sizes" or c < 2 else draw(st.integers(1, c - 1))
        if how in ("chunk", "split") and c % 2:
            how, first = "sizes", c // 2
        merge = draw(st.sampled_from(["add", "cat", "identity"]))
        out_b = draw(st.integers(2, 8))
        out_a = out_b if merge == "add" else draw(st.integers(2, 8))
        return Split(first, how, merge, out_a, out_b)
    if kind in ("attention", "attention_ln"):
        heads = draw(st.sampled_from([1, 2, 4]))
        qkv = draw(st.sampled_from(["separate", "unbind", "chunk"]))
        qk_dim = draw(st.sampled_from([2, 4]))
        v_dim = draw(st.sampled_from([2, 4])) if qkv == "separate" else qk_dim
        return Attention(heads, qk_dim, v_dim, qkv, draw(st.sampled_from(["sdpa", "matmul"])),
                         kind == "attention_ln", draw(st.booleans()),
                         kind == "attention_ln" and draw(st.booleans()))
    if kind == "shuffle":
        return Shuffle(draw(st.sampled_from(_divisors(c)[:-1])))
    if kind == "se":
        return SqueezeExcite(draw(st.integers(2, 8)), draw(st.sampled_from(["conv", "linear"])))
    if kind == "spatial_gate":
        return SpatialGate(draw(st.sampled_from(["mean", "amax"])))
    if kind == "pool":
        return Pool(draw(st.sampled_from(["max", "avg"])))
    raise AssertionError(kind)


def _channels_after(c: int, spec) -> int:
    return _block(c, spec)[1]


@st.composite
def networks(draw, *, kinds=EXACT_KINDS + INEXACT_KINDS, required: list[str] | None = None,
             max_blocks: int = 4):
    """A stem, 1 to `max_blocks` blocks of different kinds in random order (a prefix of a permutation
    of `kinds`, which spreads the few examples a CI run affords over all kinds), a head; with
    `required`, at least one block is of one of those kinds."""
    size = draw(st.sampled_from([8, 8, 6]))
    c = draw(CHANNELS)
    order = draw(st.permutations(kinds))
    net_kinds = order[:draw(st.integers(1, max_blocks))]
    if required and not set(required) & set(net_kinds):
        net_kinds[-1] = next(kind for kind in order if kind in required)
    stem, blocks, current_size = c, [], size
    for kind in net_kinds:
        spec = draw(block_spec(c, current_size, [kind]))
        blocks.append(spec)
        c = _channels_after(c, spec)
        current_size = _spatial_after(current_size, spec)
    head = Head(draw(st.sampled_from(["flatten", "pool"])), draw(st.integers(2, 6)))
    return Net(draw(st.integers(1, 2)), size, stem, tuple(blocks), head)


# ------------------------------------------------------------------------------------------------
# Helpers


def _flat_outputs(program, x) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([t.flatten() for t in pytree.tree_leaves(program(x))])


def _output_shapes(program, x) -> list[tuple[int, ...]]:
    with torch.no_grad():
        return [tuple(t.shape) for t in pytree.tree_leaves(program(x))]


def _draw_removal(data, groups) -> set[int]:
    """A non-empty strict subset of the channels of each of some (at least one) of `groups`."""
    chosen = data.draw(st.lists(st.sampled_from(range(len(groups))), min_size=1, max_size=3, unique=True),
                       label="groups")
    removed: set[int] = set()
    for index in chosen:
        classes = [int(c) for c in groups[index].classes]
        subset = data.draw(st.sets(st.sampled_from(classes), min_size=1, max_size=len(classes) - 1),
                           label=f"channels of group {groups[index].id} {groups[index].members[:2]}")
        removed |= subset
    return removed


def _capture(net: Net):
    model, x = build_network(net)
    program = capture(model, x).eval()
    return program, x


# CI runs a fixed (derandomized) sequence of examples; PRUNEFX_PROPERTY_EXAMPLES=N runs N random ones.
_EXAMPLES = int(os.environ.get("PRUNEFX_PROPERTY_EXAMPLES", "0"))


def _settings(examples: int) -> settings:
    return settings(max_examples=_EXAMPLES or examples, derandomize=not _EXAMPLES, database=None,
                    deadline=None, print_blob=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


class Draws:
    """The examples a property drew and those it could test. A network with nothing eligible is rejected
    with `assume`, so every example hypothesis counts asserts the property; and a strategy that mostly drew
    untestable networks would pass while checking little, so the tested share is asserted afterwards."""

    def __init__(self, least_share: float):
        self.least_share, self.drawn, self.tested = least_share, 0, 0

    def eligible(self, groups: list) -> None:
        self.drawn += 1
        if not groups:
            event("nothing eligible drawn (rejected)")
        assume(bool(groups))
        self.tested += 1

    def check(self) -> None:
        assert self.tested >= self.least_share * self.drawn, f"only {self.tested} of {self.drawn} draws were testable"


def _eligible_groups(net: Net, draws: Draws, *, exact: bool):
    """`net` captured, its channel groups, and those of at least two channels with this exactness (a draw
    without any is rejected)."""
    for spec in net.blocks:
        event(f"block {type(spec).__name__}")
    program, x = _capture(net)
    combing = find_channel_groups(program.module)
    groups = [g for g in combing.groups if g.exact == exact and g.size >= 2]
    draws.eligible(groups)
    return program, x, combing, groups


def _remove_and_verify(program, combing, removed: set[int]) -> None:
    assert remove_classes(program.module, combing.analysis, removed)
    program.recompile()
    verify(program)


# ------------------------------------------------------------------------------------------------
# Properties


@pytest.mark.slow
def test_removing_zeroed_channels_of_exact_groups_keeps_outputs(zero_channels):
    draws = Draws(least_share=0.5)

    @_settings(20)
    @given(net=networks(), data=st.data())
    def removing_keeps_outputs(net, data):
        program, x, combing, exact = _eligible_groups(net, draws, exact=True)
        removed = _draw_removal(data, exact)
        zero_channels(program, combing, removed)
        expected = _flat_outputs(program, x)
        shapes = _output_shapes(program, x)

        _remove_and_verify(program, combing, removed)
        assert _output_shapes(program, x) == shapes
        actual = _flat_outputs(program, x)
        tolerance = 1e-4 * expected.abs().max().item() + 1e-6
        assert (actual - expected).abs().max().item() <= tolerance

    removing_keeps_outputs()
    draws.check()


@pytest.mark.slow  # captures a network per draw: minutes on 2 cores
def test_removing_channels_of_inexact_groups_keeps_a_valid_program():
    draws = Draws(least_share=0.5)

    @_settings(8)
    @given(net=networks(required=INEXACT_KINDS), data=st.data())
    def removing_keeps_a_valid_program(net, data):
        program, x, combing, inexact = _eligible_groups(net, draws, exact=False)
        removed = _draw_removal(data, inexact)
        shapes = _output_shapes(program, x)

        _remove_and_verify(program, combing, removed)
        assert _output_shapes(program, x) == shapes
        assert torch.isfinite(_flat_outputs(program, x)).all()

    removing_keeps_a_valid_program()
    draws.check()


def test_network_builder_covers_every_block_kind():
    """Every block builds, runs and captures with the channel counts the strategies can draw."""
    blocks = (Conv(6, 3, 2, "bn"), Grouped(8, 2), Depthwise(2, 3), Residual(5), Concat(3, 5),
              Split(3, "sizes", "identity", 2, 4), Attention(2, 2, 4, "separate", "matmul", True, True),
              Attention(2, 2, 2, "unbind", "sdpa", False, False), SqueezeExcite(3, "linear"),
              SpatialGate("amax"), Pool("avg"), Split(4, "chunk", "add", 4, 4),
              Conv(8, 1, 1, "gn"), Shuffle(4), SqueezeExcite(3, "conv"),
              Attention(4, 2, 2, "chunk", "sdpa", False, True, True))
    net = Net(2, 8, 8, blocks, Head("flatten", 3))
    program, x = _capture(net)
    assert _output_shapes(program, x) == [(2, 3)]
    combing = find_channel_groups(program.module)
    assert any(g.exact for g in combing.groups) and any(not g.exact for g in combing.groups)
    assert np.isfinite(_flat_outputs(program, x).numpy()).all()


def _assert_normalised_groups_inexact_and_the_rest_exact(net: Net, normalised: str, zero_channels) -> None:
    """The groups slicing the weight of the norm `normalised` are inexact (and there are such groups);
    for the first and last channel of every exact group: zero, remove, same outputs."""
    model, x = build_network(net)
    groups = find_channel_groups(capture(model, x).eval().module).groups
    under_norm = [g for g in groups if (normalised, 0) in g.members and g.size >= 2]
    assert under_norm and not any(g.exact for g in under_norm), [(g.members, g.exact) for g in under_norm]
    for index, group in enumerate(groups):
        if not group.exact or group.size < 2:
            continue
        for position in (0, group.size - 1):
            program = capture(model, x).eval()
            combing = find_channel_groups(program.module)
            removed = {int(combing.groups[index].classes[position])}
            zero_channels(program, combing, removed)
            expected = _flat_outputs(program, x)
            remove_classes(program.module, combing.analysis, removed)
            program.recompile()
            verify(program)
            difference = (_flat_outputs(program, x) - expected).abs().max().item()
            assert difference <= 1e-4 * expected.abs().max().item() + 1e-6, (group.members, position)


def test_layer_norm_over_merged_heads_makes_head_groups_inexact(zero_channels):
    """Regression: a layer norm over the merged heads normalises over head and head-dim channels, so the
    head and head-dim factor groups must not be reported exact."""
    net = Net(batch=1, size=4, stem=4, head=Head("pool", 2),
              blocks=(Attention(heads=2, qk_dim=2, v_dim=2, residual=False, merged_norm=True),))
    _assert_normalised_groups_inexact_and_the_rest_exact(net, "1.merged_norm.weight", zero_channels)


def test_layer_norm_after_channel_shuffle_makes_shuffle_groups_inexact(zero_channels):
    """Regression: a layer norm over channels that a channel shuffle regroups normalises over both
    shuffle factors, so the two factor groups must not be reported exact."""
    net = Net(batch=1, size=4, stem=4, head=Head("pool", 2),
              blocks=(Shuffle(groups=2), Attention(heads=1, qk_dim=2, v_dim=2, norm=True, residual=False)))
    _assert_normalised_groups_inexact_and_the_rest_exact(net, "2.norm.weight", zero_channels)


# ------------------------------------------------------------------------------------------------
# A Linear viewed as an image (decoder and generator heads, some necks): only the channel factor of
# the view may be pruned; its spatial factors are geometry whatever layers follow.

class LinearImage(nn.Module):
    def __init__(self, channels: int, side: int, segments: tuple[str, ...], flatten: bool):
        super().__init__()
        self.shape = (channels, side, side)
        self.fc = nn.Linear(8, channels * side * side)
        self.segments = list(segments)
        layers, c, size = [], channels, side
        for segment in segments:
            if segment == "conv":
                layers.append(nn.Conv2d(c, c + 4, 3, padding=1))
                c += 4
            elif segment == "deconv":
                layers.append(nn.ConvTranspose2d(c, c, 4, 2, 1))
                size *= 2
            elif segment == "pixel_shuffle":
                layers.append(nn.PixelShuffle(2))
                c, size = c // 4, size * 2
            elif segment in ("max_pool", "avg_pool"):
                size //= 2
            elif segment == "interpolate":
                size *= 2
            layers.append(nn.Identity())
        self.layers = nn.ModuleList(layers)
        self.out = nn.Linear(c * size * size if flatten else c, 5)
        self.flatten = flatten

    def forward(self, z):
        x = torch.relu(self.fc(z)).view(-1, *self.shape)
        layers = iter(self.layers)
        for segment in self.segments:
            layer = next(layers)
            if segment in ("conv", "deconv", "pixel_shuffle"):
                x = torch.relu(layer(x))
                next(layers)
            elif segment == "max_pool":
                x = F.max_pool2d(layer(x), 2)
            elif segment == "avg_pool":
                x = F.avg_pool2d(layer(x), 2)
            elif segment == "interpolate":
                x = F.interpolate(layer(x), scale_factor=2)
        return self.out(x.flatten(1) if self.flatten else x.mean((2, 3)))


@st.composite
def linear_images(draw):
    segments = draw(st.lists(st.sampled_from(["conv", "deconv", "pixel_shuffle", "max_pool", "avg_pool",
                                              "interpolate"]), min_size=1, max_size=3))
    if not {"conv", "deconv"} & set(segments):
        segments.insert(draw(st.integers(0, len(segments))), "conv")
    return draw(st.sampled_from([8, 16])), draw(st.sampled_from([4, 8])), tuple(segments), draw(st.booleans())


@pytest.mark.slow  # captures a network per draw: minutes on 2 cores
def test_a_linear_viewed_as_an_image_prunes_whole_channel_planes_exactly(removal_is_exact):
    draws = Draws(least_share=0.5)

    @_settings(12)
    @given(spec=linear_images(), data=st.data())
    def prunes_whole_planes(spec, data):
        channels, side, segments, flatten = spec
        torch.manual_seed(0)
        model, z = LinearImage(*spec).eval(), torch.randn(2, 8)
        program = capture(model, z).eval()
        combing = find_channel_groups(program.module)
        for group in combing.groups:  # the Linear's output may only lose whole C planes of side x side
            if ("fc.weight", 0) in group.members:
                assert group.size in (channels, channels // 4), (spec, group.size)
        exact = [g for g in combing.groups if g.exact and g.size >= 2]
        draws.eligible(exact)
        shapes = _output_shapes(program, z)
        removal_is_exact(program, combing, _draw_removal(data, exact), z, tolerance=1e-4)
        assert _output_shapes(program, z) == shapes
        assert program.module.fc.weight.shape[0] % (side * side) == 0

    prunes_whole_planes()
    draws.check()


@_settings(50)
@given(values=st.lists(st.integers(0, 40), max_size=60), rows=st.integers(1, 3))
def test_distinct_is_numpys_unique(values, rows):
    from prunefx.graph.channels.labels import distinct

    array = np.array(values[:len(values) - len(values) % rows], dtype=np.int64).reshape(rows, -1)
    assert np.array_equal(distinct(array), np.unique(array)) and distinct(array).dtype == np.int64


def test_direct_members_are_exact_when_member_lists_hash_alike(monkeypatch):
    """Classes are grouped by a hash of their member lists and then checked exactly: lists of other lengths or
    other members that hash alike are told apart. Every key 1 here, so lists of odd length collide: class 3's
    [a, b, c] with class 1's [a], which the entries after it (class 2's b, c) would extend to [a, b, c]."""
    from prunefx.graph.channels import groups
    from prunefx.graph.channels.labels import Member

    members = [Member("a", 0, np.array([1, 3])), Member("b", 1, np.array([2, 3])), Member("c", 0, np.array([2, 3]))]
    classes = np.arange(4)  # every label its own class
    expected = {cls: frozenset((m.target, m.dim) for m in members if cls in m.labels) for cls in (1, 2, 3)}
    assert groups._direct_members(members, classes) == expected

    class Ones:
        def integers(self, low, high, size, dtype):
            return np.ones(size, dtype=dtype)

    monkeypatch.setattr(np.random, "default_rng", lambda seed: Ones())
    assert groups._direct_members(members, classes) == expected


class CondConvNet(nn.Module):
    """timm's CondConv2d: each sample's kernel mixes the expert kernels by routing weights, the experts' weights
    one flat parameter viewed as (experts, out, in, kh, kw)."""

    def __init__(self):
        from timm.layers import CondConv2d

        super().__init__()
        self.stem, self.route = nn.Conv2d(3, 8, 3, padding=1), nn.Linear(8, 4)
        self.cond, self.head = CondConv2d(8, 16, 3, padding=1, num_experts=4), nn.Linear(16, 5)

    def forward(self, x):
        x = self.stem(x).relu()
        routing = torch.sigmoid(self.route(x.mean((2, 3))))
        return self.head(self.cond(x, routing).relu().mean((2, 3)))


def test_condconv_experts_inputs_and_outputs_are_groups_removed_exactly(removal_is_exact):
    """The stem's channels (the experts' input slices), the experts and the CondConv's outputs are three exact
    groups, whose channels go from the flat expert parameter as from a plain weight."""
    pytest.importorskip("timm")
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8)
    program = capture(CondConvNet().eval(), x).eval()
    combing = find_channel_groups(program.module)
    sizes = sorted((group.size, ("cond.weight", 0) in group.members) for group in combing.groups)
    assert sizes == [(4, True), (8, False), (16, False)] and all(group.exact for group in combing.groups)
    removed = {int(group.classes[index]) for group in combing.groups for index in range(0, group.size, 3)}
    removal_is_exact(program, combing, removed, x, tolerance=1e-4)
    # every third channel of each group: 2 of 4 experts, 5 of 8 inputs and 10 of 16 outputs left
    assert program.module.cond.weight.shape == (2, 10 * 5 * 3 * 3)
