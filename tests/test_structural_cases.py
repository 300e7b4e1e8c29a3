"""The structural cases that pruning libraries are known to get wrong, each as a small model of our own:
concatenations (nested, cascaded, on a non-channel dim), splits and chunks, reshapes, transposed convs,
custom layers and operators, unused and bare parameters, several inputs and outputs, shared weights,
in-place residuals, a one-channel output, pixel shuffle, group norm, embeddings, recurrent layers and a
fused q/k/v attention with rotary embeddings. (The list follows the structural tests of Torch-Pruning's
suite; the models and checks are written here.)

Each case is either pruned exactly — zero-weight channels of every exact group removed, the program
verifies, its outputs move by at most 1e-4 relative and keep their shapes — or blocked with the operator
that stops it named. No case may end in an internal error."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils._pytree as pytree

from prunefx.graph import capture, verify
from prunefx.graph.channels.groups import find_channel_groups
from prunefx.graph.channels.removal import remove_classes

pytestmark = pytest.mark.usefixtures("one_thread")


def image(channels: int = 3, size: int = 8) -> torch.Tensor:
    return torch.randn(2, channels, size, size)


class Concat(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(3, 10, 1)
        self.bn, self.head = nn.BatchNorm2d(16), nn.Conv2d(16, 5, 1)

    def forward(self, x):
        return self.head(F.relu(self.bn(torch.cat([self.a(x), self.b(x)], 1))))


class NestedConcat(nn.Module):
    """cat(cat(a, b), c) and cat(c, cat(a, b)) read by two heads: each segment keeps its offset."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 6, 1), nn.Conv2d(3, 8, 1)
        self.head1, self.head2 = nn.Conv2d(18, 4, 1), nn.Conv2d(18, 4, 1)

    def forward(self, x):
        ab = torch.cat([self.a(x), self.b(x)], 1)
        c = self.c(x)
        return self.head1(torch.cat([ab, c], 1)) + self.head2(torch.cat([c, ab], 1))


class CascadedConcatAdd(nn.Module):
    """A concat added to a full-width conv: segment a ties to the first channels of c, b to the rest."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(3, 6, 1), nn.Conv2d(3, 10, 1), nn.Conv2d(3, 16, 3, padding=1)
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        return self.head(torch.cat([self.a(x), self.b(x)], 1) + self.c(x))


class ConcatSplit(nn.Module):
    """Concat then split at a boundary that is not the concat's: the split pieces straddle segments."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(3, 8, 1)
        self.left, self.right = nn.Conv2d(4, 4, 1), nn.Conv2d(12, 4, 1)

    def forward(self, x):
        left, right = torch.cat([self.a(x), self.b(x)], 1).split([4, 12], 1)
        return self.left(left) + self.right(right)


class Split(nn.Module):
    """Three equal pieces, two of them through their own convs, concatenated back in another order."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 12, 1)
        self.p, self.q = nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 6, 1)
        self.head = nn.Conv2d(14, 3, 1)

    def forward(self, x):
        one, two, three = self.stem(x).split(4, 1)
        return self.head(torch.cat([self.q(three), F.relu(self.p(one)), two], 1))


class NonChannelConcat(nn.Module):
    """Concat along the height: the two branches' channels are the same channels, tied together."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(3, 8, 1)
        self.head = nn.Conv2d(8, 4, 3)

    def forward(self, x):
        return self.head(torch.cat([self.a(x), self.b(x)], 2))


class Reshapes(nn.Module):
    """view to [B, C, H*W], a linear over the channels, flatten into a classifier."""

    def __init__(self):
        super().__init__()
        self.conv, self.mix = nn.Conv2d(3, 8, 3, padding=1), nn.Linear(8, 6)
        self.fc = nn.Linear(6 * 64, 5)

    def forward(self, x):
        tokens = self.conv(x).view(x.shape[0], 8, -1).transpose(1, 2)   # [B, HW, C]
        return self.fc(F.relu(self.mix(tokens)).transpose(1, 2).flatten(1))


class LeNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 6, 5), nn.Conv2d(6, 16, 5)
        self.fc1, self.fc2, self.fc3 = nn.Linear(16 * 4 * 4, 32), nn.Linear(32, 24), nn.Linear(24, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x.flatten(1))))))


class FullyConnected(nn.Module):
    """Linears with a residual and a layer-free skip to the output width."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3, self.out = nn.Linear(12, 16), nn.Linear(16, 16), nn.Linear(16, 16), nn.Linear(16, 4)

    def forward(self, x):
        h = F.relu(self.fc1(x))
        h = h + F.relu(self.fc3(F.relu(self.fc2(h))))
        return self.out(h)


class TransposedConv(nn.Module):
    """A decoder: conv, two transposed convs with a batch norm between, back to the image size."""

    def __init__(self):
        super().__init__()
        self.enc = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.up1, self.bn = nn.ConvTranspose2d(8, 6, 4, 2, 1), nn.BatchNorm2d(6)
        self.up2 = nn.ConvTranspose2d(6, 3, 4, 2, 1)

    def forward(self, x):
        return self.up2(F.relu(self.bn(self.up1(F.relu(self.enc(x))))))


class ScaleAndShift(nn.Module):
    """A customised layer written as a Python module with bare parameters (no nn layer inside)."""

    def __init__(self, channels: int):
        super().__init__()
        self.scale = nn.Parameter(torch.rand(1, channels, 1, 1) + 0.5)
        self.shift = nn.Parameter(torch.randn(channels))

    def forward(self, x):
        return x * self.scale + self.shift.view(1, -1, 1, 1)


class CustomizedLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.custom, self.b = nn.Conv2d(3, 8, 3, padding=1), ScaleAndShift(8), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.b(F.relu(self.custom(self.a(x))))


def _channel_cummax():
    """A running max over the channel dim: an operator with no channel rule. Defined once per process:
    tests/test_write_back.py executes this file a second time, and with two definitions of the operator
    alive a pytest worker crashed (segmentation fault) calling it during capture."""
    if hasattr(torch.ops.prunefx_structural, "channel_cummax"):
        return torch.ops.prunefx_structural.channel_cummax

    @torch.library.custom_op("prunefx_structural::channel_cummax", mutates_args=())
    def channel_cummax(x: torch.Tensor) -> torch.Tensor:
        return torch.cummax(x, dim=1).values

    @channel_cummax.register_fake
    def _(x):
        return torch.empty_like(x)

    return channel_cummax


channel_cummax = _channel_cummax()


class CustomOperator(nn.Module):
    """A torch.library operator prunefx has no rule for, between two convs, beside a prunable branch."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 4, 1)
        self.c, self.d = nn.Conv2d(3, 6, 1), nn.Conv2d(6, 4, 1)

    def forward(self, x):
        return self.b(channel_cummax(self.a(x))) + self.d(F.relu(self.c(x)))


class UnusedParameters(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 4, 1)
        self.unused_conv = nn.Conv2d(8, 8, 1)
        self.unused = nn.Parameter(torch.randn(8))

    def forward(self, x):
        return self.b(F.relu(self.a(x)))


class MultipleInputsOutputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(1, 8, 1)
        self.head1, self.head2 = nn.Conv2d(8, 4, 1), nn.Linear(8, 2)

    def forward(self, x, y):
        s = F.relu(self.a(x) + self.b(y))
        return self.head1(s), {"pooled": self.head2(s.mean((2, 3)))}


class SharedWeights(nn.Module):
    """The same conv applied twice: its input and output channels become one group."""

    def __init__(self):
        super().__init__()
        self.stem, self.shared, self.head = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.head(self.shared(F.relu(self.shared(self.stem(x)))))


class InplaceResidual(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem, self.body, self.bn = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.head = nn.Conv2d(8, 4, 1)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        x = self.stem(x)
        out = self.bn(self.body(x))
        out += x
        return self.head(self.act(out))


class OneChannelOutput(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 1, 1)

    def forward(self, x):
        return torch.sigmoid(self.b(F.relu(self.a(x))))


class PixelShuffle(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.up, self.b = nn.Conv2d(3, 6 * 4, 3, padding=1), nn.PixelShuffle(2), nn.Conv2d(6, 3, 3, padding=1)

    def forward(self, x):
        return self.b(F.relu(self.up(self.a(x))))


class GroupNorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.norm, self.b = nn.Conv2d(3, 16, 3, padding=1), nn.GroupNorm(4, 16), nn.Conv2d(16, 4, 1)

    def forward(self, x):
        return self.b(F.relu(self.norm(self.a(x))))


class Chunk(nn.Module):
    """A gated unit: the conv's output chunked in two halves multiplied together."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        value, gate = self.a(x).chunk(2, dim=1)
        return self.b(value * torch.sigmoid(gate))


class Embedding(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed, self.fc, self.out = nn.Embedding(20, 16), nn.Linear(16, 12), nn.Linear(12, 5)

    def forward(self, tokens):
        return self.out(F.relu(self.fc(self.embed(tokens)))).mean(1)


class Recurrent(nn.Module):
    """A conv feature map read column by column by a recurrent layer (a text-recognition head)."""

    def __init__(self, kind: type[nn.RNNBase]):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.rnn, self.out = kind(8 * 2, 6, batch_first=True, bidirectional=True), nn.Linear(12, 5)

    def forward(self, x):
        features = F.adaptive_avg_pool2d(F.relu(self.conv(x)), (2, 8))        # [B, 8, 2, 8]
        sequence = features.permute(0, 3, 1, 2).flatten(2)                    # [B, 8 columns, 16]
        return self.out(self.rnn(sequence)[0])


def _interleaved_rotation(x):
    """Rotate pairs (2i, 2i+1) of the last dim by 90 degrees: (-x[2i+1], x[2i])."""
    return torch.stack([-x[..., 1::2], x[..., ::2]], -1).reshape(x.shape)


class RotaryAttention(nn.Module):
    """EVA-02-style attention: one fused q/k/v projection unbound into q, k and v, and rotary position
    embeddings that rotate pairs of head dims (a strided slice and a stack)."""

    def __init__(self, dim: int = 16, heads: int = 2, tokens: int = 6):
        super().__init__()
        self.heads, head_dim = heads, dim // heads
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        angles = torch.arange(tokens)[:, None] * torch.rand(head_dim // 2)[None]
        self.register_buffer("sin", angles.sin().repeat_interleave(2, -1))
        self.register_buffer("cos", angles.cos().repeat_interleave(2, -1))

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = (t * self.cos + _interleaved_rotation(t) * self.sin for t in (q, k))
        out = F.scaled_dot_product_attention(q, k, v)
        return x + self.proj(out.transpose(1, 2).reshape(b, n, c))


class TensorExponent(nn.Module):
    """A learnt per-channel exponent (pow with a tensor exponent) must shrink with its channels."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 2, 1)
        self.exponent = nn.Parameter(torch.rand(1, 8, 1, 1) + 1)
        self.register_buffer("ceiling", torch.rand(8, 1, 1))  # a per-channel bound (clamp.Tensor)

    def forward(self, x):
        return self.b(torch.pow(torch.sigmoid(self.a(x)), self.exponent).clamp(max=self.ceiling))


class UnbatchedConv1d(nn.Module):
    """Convolutions on an unbatched [C, L] signal: dim 0 holds the channels, dim 1 the length."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv1d(4, 8, 3, padding=1), nn.Conv1d(8, 5, 3)

    def forward(self, x):
        return self.b(F.max_pool1d(F.relu(self.a(x)), 2))


class LinearIntoUnbatchedConv1d(nn.Module):
    """A Linear's features read as the length of an unbatched conv1d: positions, never channels."""

    def __init__(self):
        super().__init__()
        self.fc, self.conv = nn.Linear(4, 8), nn.Conv1d(6, 6, 3, padding=1)

    def forward(self, x):           # x [6, 4] -> [6 channels, 8 positions]
        return self.conv(F.relu(self.fc(x)))


class VectorProduct(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc, self.w = nn.Linear(4, 8), nn.Parameter(torch.randn(8))

    def forward(self, x):
        return F.relu(self.fc(x)) @ self.w


class ExpandAs(nn.Module):
    """A pooled context expanded back over the feature map (MobileViTv2's linear attention)."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = self.a(x)
        return self.b(F.relu(y) * y.amax((2, 3), keepdim=True).expand_as(y))


class Repeats(nn.Module):
    """Channels tiled (repeat, XCiT's class-attention) and interleaved (repeat_interleave, GCViT's
    global query) before a conv reads them: a channel goes from every copy at once."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(3, 6, 1)
        self.tiled, self.interleaved = nn.Conv2d(8, 4, 1), nn.Conv2d(12, 4, 1)

    def forward(self, x):
        return self.tiled(self.a(x).repeat(1, 2, 1, 1)) + self.interleaved(self.b(x).repeat_interleave(2, dim=1))


class GroupedQueryAttention(nn.Module):
    """Four query heads share two key/value heads (enable_gqa)."""

    def __init__(self):
        super().__init__()
        self.q, self.kv, self.proj = nn.Linear(16, 16), nn.Linear(16, 16), nn.Linear(16, 16)

    def forward(self, x):
        b, n, _ = x.shape
        q = self.q(x).view(b, n, 4, 4).transpose(1, 2)
        k, v = self.kv(x).view(b, n, 2, 2, 4).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
        return self.proj(out.transpose(1, 2).reshape(b, n, 16))


class MultiQueryAttention(nn.Module):
    """Four query heads, one key/value head that attention broadcasts over them (timm's MobileNetV4 hybrids)."""

    def __init__(self, heads: int = 4, head_dim: int = 3):
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        self.q, self.proj = nn.Linear(16, heads * head_dim), nn.Linear(heads * head_dim, 16)
        self.k, self.v = nn.Linear(16, head_dim), nn.Linear(16, head_dim)

    def forward(self, x):
        b, n, _ = x.shape
        q = self.q(x).view(b, n, self.heads, self.head_dim).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, self.k(x).unsqueeze(1), self.v(x).unsqueeze(1))
        return self.proj(out.transpose(1, 2).reshape(b, n, -1))


class SharedUnderSeveralNames(nn.Module):
    """One depthwise conv that is also every block's `encode` (timm CoaT's position encoding): one Parameter
    under three names."""

    class Block(nn.Module):
        def __init__(self, encode: nn.Module):
            super().__init__()
            self.encode, self.mix = encode, nn.Conv2d(8, 8, 1)

        def forward(self, x):
            return self.mix(x + self.encode(x))

    def __init__(self):
        super().__init__()
        self.stem, self.encode = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.blocks, self.head = nn.Sequential(self.Block(self.encode), self.Block(self.encode)), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)))


class PermutedInSubmodule(nn.Module):
    """A Python list indexing channels inside a submodule (timm CSATv2's zig-zag order): torch.export lifts it
    into a plain tensor attribute of that submodule, which removal slices and keeps plain."""

    class Permute(nn.Module):
        def __init__(self, channels: int):
            super().__init__()
            self.order = torch.randperm(channels, generator=torch.Generator().manual_seed(1)).tolist()

        def forward(self, x):
            return x[:, self.order]

    def __init__(self):
        super().__init__()
        self.a, self.permute, self.head = nn.Conv2d(3, 16, 1), self.Permute(16), nn.Conv2d(16, 4, 1)

    def forward(self, x):
        return self.head(self.permute(F.relu(self.a(x))))


# name -> (model factory, example inputs, members that one exact group must hold together)
EXACT_CASES = {
    "multi_query_attention": (MultiQueryAttention, lambda: torch.randn(2, 5, 16), [("q.weight", 0), ("proj.weight", 1)]),
    "shared_under_several_names": (SharedUnderSeveralNames, lambda: image(),
                                   [("stem.weight", 0), ("blocks.1.encode.weight", 0), ("blocks.1.mix.weight", 1)]),
    "permuted_in_submodule": (PermutedInSubmodule, lambda: image(), [("permute.lifted_tensor_0", 0), ("head.weight", 1)]),
    "concat": (Concat, lambda: image(), [("a.weight", 0), ("bn.weight", 0), ("head.weight", 1)]),
    "nested_concat": (NestedConcat, lambda: image(), [("b.weight", 0), ("head1.weight", 1), ("head2.weight", 1)]),
    "cascaded_concat_add": (CascadedConcatAdd, lambda: image(), [("a.weight", 0), ("c.weight", 0)]),
    # a's first 4 channels feed `left`, its last 4 `right`: two groups, each with its own reader
    "concat_split": (ConcatSplit, lambda: image(), [("a.weight", 0), ("left.weight", 1)]),
    # the middle piece goes to the head untouched: the stem's channels 4..7 are the head's inputs 10..13
    "split": (Split, lambda: image(), [("stem.weight", 0), ("head.weight", 1)]),
    "non_channel_concat": (NonChannelConcat, lambda: image(), [("a.weight", 0), ("b.weight", 0), ("head.weight", 1)]),
    "reshape_view_flatten": (Reshapes, lambda: image(), [("conv.weight", 0), ("mix.weight", 1)]),
    "lenet": (LeNet, lambda: torch.randn(2, 1, 28, 28), [("conv2.weight", 0), ("fc1.weight", 1)]),
    "fully_connected": (FullyConnected, lambda: torch.randn(3, 12), [("fc1.weight", 0), ("fc3.weight", 0),
                                                                       ("out.weight", 1)]),
    "transposed_conv": (TransposedConv, lambda: image(), [("up1.weight", 1), ("bn.weight", 0), ("up2.weight", 0)]),
    "customized_layer": (CustomizedLayer, lambda: image(), [("a.weight", 0), ("custom.scale", 1),
                                                            ("custom.shift", 0), ("b.weight", 1)]),
    "unused_parameters": (UnusedParameters, lambda: image(), [("a.weight", 0), ("b.weight", 1)]),
    "multiple_inputs_outputs": (MultipleInputsOutputs, lambda: (image(), image(1)),
                                [("a.weight", 0), ("b.weight", 0), ("head1.weight", 1), ("head2.weight", 1)]),
    "shared_weights": (SharedWeights, lambda: image(), [("stem.weight", 0), ("shared.weight", 0),
                                                        ("shared.weight", 1), ("head.weight", 1)]),
    "inplace_residual": (InplaceResidual, lambda: image(), [("stem.weight", 0), ("body.weight", 0),
                                                            ("head.weight", 1)]),
    "one_channel_output": (OneChannelOutput, lambda: image(), [("a.weight", 0), ("b.weight", 1)]),
    "pixel_shuffle": (PixelShuffle, lambda: image(), [("a.weight", 0), ("b.weight", 1)]),
    "chunk": (Chunk, lambda: image(), [("a.weight", 0), ("b.weight", 1)]),
    "embedding": (Embedding, lambda: torch.randint(0, 20, (2, 7)), [("embed.weight", 1), ("fc.weight", 1)]),
    "gru": (lambda: Recurrent(nn.GRU), lambda: image(), [("conv.weight", 0), ("rnn.weight_ih_l0", 1),
                                                        ("rnn.weight_ih_l0_reverse", 1)]),
    "lstm": (lambda: Recurrent(nn.LSTM), lambda: image(), [("conv.weight", 0), ("rnn.weight_ih_l0", 1)]),
    "tensor_exponent": (TensorExponent, lambda: image(), [("a.weight", 0), ("exponent", 1), ("ceiling", 0),
                                                                ("b.weight", 1)]),
    "unbatched_conv1d": (UnbatchedConv1d, lambda: torch.randn(4, 12), [("a.weight", 0), ("b.weight", 1)]),
    "expand_as": (ExpandAs, lambda: image(), [("a.weight", 0), ("b.weight", 1)]),
    "repeat": (Repeats, lambda: image(), [("a.weight", 0), ("tiled.weight", 1)]),
    "repeat_interleave": (Repeats, lambda: image(), [("b.weight", 0), ("interleaved.weight", 1)]),
    "rotary_fused_qkv": (RotaryAttention, lambda: torch.randn(2, 6, 16), [("qkv.weight", 0), ("proj.weight", 1)]),
}


def _outputs(program, inputs):
    with torch.no_grad():
        return pytree.tree_leaves(program(*inputs))


def _removed_classes(combing, seed: int = 0) -> set[int]:
    """A third of the channels (at least one) of every exact group, chosen at random."""
    rng = np.random.default_rng(seed)
    exact = [g for g in combing.groups if g.exact and g.size >= 2]
    return {int(c) for g in exact for c in rng.choice(g.classes, max(1, g.size // 3), replace=False)}


def _captured(factory, make_inputs):
    torch.manual_seed(0)
    inputs = make_inputs()
    inputs = inputs if isinstance(inputs, tuple) else (inputs,)
    return capture(factory().eval(), inputs).eval(), inputs


@pytest.mark.parametrize("case", sorted(EXACT_CASES))
def test_case_is_pruned_exactly(case, removal_is_exact):
    factory, make_inputs, together = EXACT_CASES[case]
    program, inputs = _captured(factory, make_inputs)
    combing = find_channel_groups(program.module)
    assert any(set(together) <= set(g.members) and g.exact for g in combing.groups), \
        f"no exact group holds {together}: {[g.members for g in combing.groups]}"
    shapes = [tuple(t.shape) for t in _outputs(program, inputs)]
    removed = _removed_classes(combing)
    removal_is_exact(program, combing, removed, inputs, tolerance=1e-4)
    assert [tuple(t.shape) for t in _outputs(program, inputs)] == shapes


def test_concat_segments_keep_their_offsets_when_channels_go(zero_channels):
    """Removing channel 0 of `a` and channel 0 of `b` must drop input channels 0 and 6 of the head."""
    program, inputs = _captured(Concat, image)
    combing = find_channel_groups(program.module)
    first = [next(int(g.classes[0]) for g in combing.groups if (name, 0) in g.members) for name in ("a.weight", "b.weight")]
    head = program.module.head.weight.detach().clone()
    zero_channels(program, combing, set(first))
    remove_classes(program.module, combing.analysis, set(first))
    kept = [c for c in range(16) if c not in (0, 6)]
    assert torch.equal(program.module.head.weight, head[:, kept])


def test_shared_conv_loses_the_same_channels_on_both_sides():
    program, inputs = _captured(SharedWeights, image)
    combing = find_channel_groups(program.module)
    group = next(g for g in combing.groups if ("shared.weight", 0) in g.members)
    remove_classes(program.module, combing.analysis, {int(group.classes[2])})
    program.recompile()
    verify(program)
    assert tuple(program.module.shared.weight.shape) == (7, 7, 3, 3)


def test_unused_parameters_are_left_alone():
    program, inputs = _captured(UnusedParameters, image)
    combing = find_channel_groups(program.module)
    remove_classes(program.module, combing.analysis, _removed_classes(combing))
    state = program.module.state_dict()  # torch.export keeps them: they must come out as they went in
    assert tuple(state["unused_conv.weight"].shape) == (8, 8, 1, 1) and tuple(state["unused"].shape) == (8,)
    assert program.module.a.weight.shape[0] < 8


def test_custom_operator_blocks_its_channels_by_name_and_the_rest_is_exact(removal_is_exact):
    program, inputs = _captured(CustomOperator, image)
    combing = find_channel_groups(program.module)
    assert not any(("a.weight", 0) in g.members for g in combing.groups)
    blocked = [b for b in combing.blocked if ("a.weight", 0) in b.members]
    assert blocked and blocked[0].operators == ["prunefx_structural.channel_cummax.default"]
    branch = next(g for g in combing.groups if ("c.weight", 0) in g.members)
    removal_is_exact(program, combing, {int(branch.classes[1])}, inputs, tolerance=1e-4)
    assert program.module.a.weight.shape[0] == 8 and program.module.c.weight.shape[0] == 5


def test_group_norm_prunes_every_group_alike_but_not_as_exact():
    """Removing a channel changes its group's statistics, so the group is not exact; pruning the same
    channel position in every group keeps the four groups and the outputs' shapes."""
    program, inputs = _captured(GroupNorm, image)
    combing = find_channel_groups(program.module)
    group = next(g for g in combing.groups if ("norm.weight", 0) in g.members)
    assert group.size == 4 and not group.exact  # 4 channels per group, removed in every group at once
    shapes = [tuple(t.shape) for t in _outputs(program, inputs)]
    remove_classes(program.module, combing.analysis, {int(group.classes[1])})
    program.recompile()
    verify(program)
    assert tuple(program.module.a.weight.shape) == (12, 3, 3, 3)
    assert [tuple(t.shape) for t in _outputs(program, inputs)] == shapes


def test_rotary_attention_prunes_heads_and_pairs_of_head_dims():
    program, inputs = _captured(RotaryAttention, lambda: torch.randn(2, 6, 16))
    combing = find_channel_groups(program.module)
    qkv = sorted(g.size for g in combing.groups if g.factor and ("qkv.weight", 0) in g.members)
    assert qkv == [2, 4]  # 2 heads, 4 pairs of the 8 head dims (a rotation keeps its pair together)
    pairs = next(g for g in combing.groups if g.factor and g.size == 4)
    remove_classes(program.module, combing.analysis, {int(pairs.classes[1])})
    assert tuple(program.module.sin.shape) == (6, 6) and tuple(program.module.qkv.weight.shape) == (3 * 12, 16)


def test_a_linear_read_as_the_length_of_an_unbatched_conv_is_not_pruned():
    """Read as [N, C, L], the unbatched conv tied the Linear's 8 features (the length) to the conv's
    input channels, and removing one shortened the signal."""
    program, inputs = _captured(LinearIntoUnbatchedConv1d, lambda: torch.randn(6, 4))
    combing = find_channel_groups(program.module)
    assert not any(("fc.weight", 0) in g.members for g in combing.groups)


def test_a_product_with_a_vector_is_blocked_by_name():
    """Blocking only the matrix's side left the vector's dim a group of its own; removing from it broke
    the product after removal."""
    program, inputs = _captured(VectorProduct, lambda: torch.randn(2, 4))
    combing = find_channel_groups(program.module)
    assert not any(("w", 0) in g.members or ("fc.weight", 0) in g.members for g in combing.groups)
    blocked = next(b for b in combing.blocked if ("fc.weight", 0) in b.members)
    assert blocked.operators == ["aten.matmul.default"]


def test_grouped_query_attention_is_blocked_by_name():
    """A q head removed out of step with its k/v head would silently attend to another head's keys."""
    program, inputs = _captured(GroupedQueryAttention, lambda: torch.randn(2, 5, 16))
    combing = find_channel_groups(program.module)
    assert not any(("q.weight", 0) in g.members for g in combing.groups)
    blocked = [b for b in combing.blocked if ("q.weight", 0) in b.members]
    assert blocked and all(b.operators == ["aten.scaled_dot_product_attention.default"] for b in blocked)


def test_a_pruned_program_trains_and_survives_save_and_load(tmp_path):
    """After removal every parameter gets a gradient of its own (new) shape, and the pruned program saved
    and loaded again gives the same outputs."""
    from prunefx.graph import Program

    program, inputs = _captured(NestedConcat, image)
    combing = find_channel_groups(program.module)
    remove_classes(program.module, combing.analysis, _removed_classes(combing))
    program.recompile()
    program.train()
    sum(t.square().sum() for t in pytree.tree_leaves(program(*inputs))).backward()
    for name, parameter in program.module.named_parameters():
        assert parameter.grad is not None and parameter.grad.shape == parameter.shape, name
    program.eval()
    reloaded = Program.load(program.save(tmp_path / "pruned.pt2")).eval()
    assert tuple(reloaded.module.b.weight.shape) == (4, 3, 1, 1)
    torch.testing.assert_close(_outputs(reloaded, inputs), _outputs(program, inputs))


def standardised(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """`conv` with its weight standardised per output channel on every call (BiT's StdConv2d, NFNet's
    ScaledStdConv2d): the statistics run over the input channels."""
    weight = F.batch_norm(conv.weight.reshape(1, conv.out_channels, -1), None, None, training=True, eps=1e-6)
    return F.conv2d(x, weight.reshape_as(conv.weight), conv.bias, padding=conv.padding)


class StandardisedConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 6, 3, padding=1), nn.Conv2d(6, 4, 1)

    def forward(self, x):
        return standardised(self.c, F.relu(standardised(self.b, F.relu(self.a(x)))))


def test_input_channels_of_a_standardised_conv_are_prunable_but_not_exact():
    """A zeroed input channel still counts in the weight's mean and variance: removing it moves the
    outputs, so the group must not claim exactness (it stays prunable)."""
    torch.manual_seed(0)
    program = capture(StandardisedConv().eval(), image())  # not program.eval(): the standardisation trains
    combing = find_channel_groups(program.module)
    group = next(g for g in combing.groups if ("a.weight", 0) in g.members)
    assert ("b.weight", 1) in group.members and not group.exact
    # between two standardised convs: a group although no conv reads a parameter directly (the weight is
    # computed on every call); before, it was dropped as carrying no compute
    assert any({("b.weight", 0), ("c.weight", 1)} <= set(g.members) for g in combing.groups)


BLOCKED_CASES = {
    "custom_operator": (CustomOperator, image), "grouped_query_attention": (GroupedQueryAttention,
                                                                            lambda: torch.randn(2, 5, 16)),
    "vector_product": (VectorProduct, lambda: torch.randn(2, 4)), "group_norm": (GroupNorm, image),
}


@pytest.mark.parametrize("case", sorted(EXACT_CASES) + sorted(BLOCKED_CASES))
def test_remove_channels_to_half_the_macs_keeps_every_case_valid(case):
    """The pass a user runs, on every case: it ends with a valid program of the same output shapes, or
    (a model with nothing left to prune) with a one-line error naming what blocked it, never another
    exception."""
    from prunefx.graph.errors import PrunefxError
    from prunefx.passes import remove_channels

    factory, make_inputs = EXACT_CASES[case][:2] if case in EXACT_CASES else BLOCKED_CASES[case]
    program, inputs = _captured(factory, make_inputs)
    shapes = [tuple(t.shape) for t in _outputs(program, inputs)]
    try:
        result = remove_channels(program, config={"macs": 0.5, "round_to": 1, "strict": False})
    except PrunefxError as error:
        assert case in BLOCKED_CASES and "blocked by" in str(error) and "\n" not in str(error)
        return
    verify(result.program, reexport=False)  # the exact-removal test above re-exports every case
    assert [tuple(t.shape) for t in _outputs(result.program, inputs)] == shapes
    assert result.stats["macs_after"] < result.stats["macs_before"] or case in BLOCKED_CASES
