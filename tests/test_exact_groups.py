"""A group is reported exact when its zero-weight channels can go without changing outputs
(graph/channels/zero_channels.py). The oracle: zero every member slice of two of the group's channels, remove
them, and compare the outputs on a fresh input; the report must say exact exactly when nothing moved."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import prunefx
from prunefx.graph.channels import zero_channels
from prunefx.graph.channels.groups import find_channel_groups
from prunefx.passes import remove_channels


class SigmoidIntoConv(nn.Module):  # the 0.5 of a zero channel meets the next convolution's zero columns
    def __init__(self):
        super().__init__()
        self.first, self.second = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.second(torch.sigmoid(self.first(x)))


class SigmoidSummed(nn.Module):  # a soft count over the channels: each zero channel adds 0.5
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x):
        return torch.sigmoid(self.conv(x)).sum(1)


class SqueezeExcite(nn.Module):  # a gate of sigmoid(0) multiplies the zero channel
    def __init__(self):
        super().__init__()
        self.conv, self.squeeze, self.excite = nn.Conv2d(3, 8, 3, padding=1), nn.Linear(8, 4), nn.Linear(4, 8)
        self.out = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = torch.relu(self.conv(x))
        gate = torch.sigmoid(self.excite(torch.relu(self.squeeze(y.mean((2, 3)))))).view(-1, 8, 1, 1)
        return self.out(y * gate)


class MapAddedThenSummed(nn.Module):  # a map broadcast over the channels lands on the zero ones too
    def __init__(self):
        super().__init__()
        self.conv, self.map = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(3, 1, 3, padding=1)

    def forward(self, x):
        return (self.conv(x) + self.map(x)).sum(1)


class LinearAttention(nn.Module):  # elu + 1 feature maps: the zero query and key dims multiply as ones
    def __init__(self):
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(16, 16) for _ in range(4))

    def forward(self, x):
        q, k = nn.functional.elu(self.q(x)) + 1, nn.functional.elu(self.k(x)) + 1
        return self.o(torch.einsum("bnd,bne->bde", k, self.v(x)).transpose(1, 2).matmul(q.transpose(1, 2)).transpose(1, 2))


class ReluSummed(nn.Module):  # relu(0) = 0: summing the channels is exact
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x):
        return torch.relu(self.conv(x)).sum(1)


class LinearOverTheLength(nn.Module):  # the linear reads the length: the zero channels' 0.5 goes on to the sum
    def __init__(self):
        super().__init__()
        self.conv, self.linear = nn.Conv1d(3, 8, 3, padding=1), nn.Linear(10, 6)

    def forward(self, x):
        return self.linear(torch.sigmoid(self.conv(x))).sum(1)


class NormOverTheLength(nn.Module):  # a layer norm over the length gives a zero channel its bias
    def __init__(self):
        super().__init__()
        self.conv, self.norm = nn.Conv1d(3, 8, 3, padding=1), nn.LayerNorm(10)
        nn.init.uniform_(self.norm.bias, 0.5, 1.0)

    def forward(self, x):
        return self.norm(self.conv(x)).sum(1)


class SoftmaxOverSpace(nn.Module):  # a zero channel's softmax is 1/N everywhere
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x):
        return torch.softmax(self.conv(x).flatten(2), -1).sum(1)


class SecondPieceNonzero(nn.Module):  # a cat along the length: the sigmoid piece's channels are the same group
    def __init__(self):
        super().__init__()
        self.first, self.second = nn.Conv1d(3, 8, 3, padding=1), nn.Conv1d(3, 8, 3, padding=1)

    def forward(self, x):
        return torch.cat([self.first(x), torch.sigmoid(self.second(x))], dim=2).sum(1)


class MapExpanded(nn.Module):  # an expand writes the map's values over the zero channels
    def __init__(self):
        super().__init__()
        self.conv, self.map = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(3, 1, 3, padding=1)

    def forward(self, x):
        return (self.conv(x) + self.map(x).expand(-1, 8, -1, -1)).sum(1)


class MinimumWithMap(nn.Module):  # minimum(0, m) is m where m < 0
    def __init__(self):
        super().__init__()
        self.conv, self.map = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(3, 1, 3, padding=1)

    def forward(self, x):
        return torch.minimum(self.conv(x), self.map(x)).sum(1)


class ActivationAsWeight(nn.Module):  # a linear whose weight is an activation: 0.5 times 0.5 on the zero channels
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x):
        y = torch.sigmoid(self.conv(x))
        return nn.functional.linear(y.flatten(2).transpose(1, 2), y.mean((2, 3)))


CASES = [(SigmoidIntoConv, (1, 3, 8, 8), True), (SigmoidSummed, (1, 3, 8, 8), False), (SqueezeExcite, (1, 3, 8, 8), True),
         (MapAddedThenSummed, (1, 3, 8, 8), False), (LinearAttention, (1, 5, 16), False), (ReluSummed, (1, 3, 8, 8), True),
         (LinearOverTheLength, (1, 3, 10), False), (NormOverTheLength, (1, 3, 10), False),
         (SoftmaxOverSpace, (1, 3, 8, 8), False), (SecondPieceNonzero, (1, 3, 10), False),
         (MapExpanded, (1, 3, 8, 8), False), (MinimumWithMap, (1, 3, 8, 8), False),
         (ActivationAsWeight, (1, 3, 8, 8), False)]


def _zero_two_channels(program, group) -> None:
    tensors = dict(program.module.named_parameters()) | dict(program.module.named_buffers())
    with torch.no_grad():
        for target, dim in group.members:
            tensors[target].narrow(dim, 0, 2).zero_()


@pytest.mark.parametrize(("model", "shape", "exact"), CASES, ids=[case[0].__name__ for case in CASES])
def test_a_group_is_exact_when_removing_its_zero_weight_channels_changes_no_output(model, shape, exact):
    torch.manual_seed(0)
    program = prunefx.capture(model().eval(), torch.randn(shape)).eval()
    groups = find_channel_groups(program.module).groups
    group = next(group for group in groups if group.size in (8, 16))
    _zero_two_channels(program, group)
    fresh = torch.randn(shape)
    before = program(fresh)
    kept = 1 - 2 / sum(each.size for each in groups)  # the two zero channels rank last of all
    config = {"channels": kept, "importance": "l2", "heads": "dims", "round_to": 1, "strict": False}
    pruned = prunefx.Pipeline([(remove_channels, config)], verify="shapes").run(program)
    reported = next(entry for entry in pruned.stats()["remove_channels"]["groups"]
                    if entry["width_before"] == group.size)
    assert reported["width_after"] == group.size - 2  # the two zeroed channels went, and only they
    moved = (pruned.program(fresh) - before).abs().max().item()
    assert (moved < 1e-5) == exact and reported["exact"] == exact, (moved, reported)


def test_an_operator_the_nonzero_tracking_cannot_follow_makes_what_it_reads_inexact(monkeypatch):
    """Whatever an operator's form, the tracking never raises out of the channel analysis (a 0-d max once
    did, and no model with it would prune): what that operator reads counts as inexact."""
    def cannot_follow(self, node):
        raise ZeroDivisionError("a form the tracking does not know")

    monkeypatch.setattr(zero_channels.NonzeroChannels, "_reduced", cannot_follow)
    program = prunefx.capture(SigmoidSummed().eval(), torch.randn(1, 3, 8, 8))  # a sum of nonzero channels
    assert [group.exact for group in find_channel_groups(program.module).groups] == [False]
