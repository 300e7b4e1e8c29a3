"""A user's custom operator (torch.library): blocked, with the operator named, until a channel rule is
registered with `prunefx.channel_rule`; pruned exactly after."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import prunefx
from prunefx.graph.channels.groups import find_channel_groups
from prunefx.graph.channels.literals import LITERAL_REWRITES, keep_mask
from prunefx.graph.channels.rules import RULES
from prunefx.passes import remove_channels


@torch.library.custom_op("prunefx_test::scaled_relu", mutates_args=())
def scaled_relu(x: torch.Tensor) -> torch.Tensor:
    return torch.relu(x) * 2.0


@scaled_relu.register_fake
def _(x):
    return torch.empty_like(x)


OPERATOR = torch.ops.prunefx_test.scaled_relu.default


class WithCustomOp(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 16, 3, padding=1)
        self.b = nn.Conv2d(16, 8, 3, padding=1)

    def forward(self, x):
        return self.b(scaled_relu(self.a(x)))


@pytest.fixture
def no_rule_afterwards():
    yield
    RULES.pop(OPERATOR, None)


def test_a_custom_op_is_blocked_and_named_then_pruned_exactly_with_its_rule(no_rule_afterwards, removal_is_exact):
    torch.manual_seed(0)
    model, x = WithCustomOp().eval(), torch.randn(1, 3, 8, 8)
    program = prunefx.capture(model, x).eval()
    combing = find_channel_groups(program.module)
    assert not any(("a.weight", 0) in g.members for g in combing.groups)
    assert any("prunefx_test.scaled_relu" in op for b in combing.blocked for op in b.operators)

    @prunefx.channel_rule(OPERATOR)
    def elementwise(ctx, node):
        return prunefx.graph.channels.rules.same_as_input(ctx, node)

    program = prunefx.capture(model, x).eval()
    combing = find_channel_groups(program.module)
    group = next(g for g in combing.groups if ("a.weight", 0) in g.members)
    assert group.exact and group.size == 16 and not combing.blocked
    removal_is_exact(program, combing, {int(c) for c in group.classes[:5]}, x)
    assert program.module.a.weight.shape[0] == 11
    pruned = remove_channels(prunefx.capture(model, x).eval(), config={"channels": 0.5, "round_to": 4})
    assert pruned.program.module.b.weight.shape[1] == 8


def test_channel_rule_refuses_what_is_not_an_operator():
    with pytest.raises(prunefx.PrunefxError, match="operator overload"):
        prunefx.channel_rule("prunefx_test::scaled_relu")
    with pytest.raises(prunefx.PrunefxError, match="must be a function"):
        prunefx.channel_rule(OPERATOR)(42)
    assert OPERATOR not in RULES


# A custom operator that spells a width in its arguments: (B, C) -> (B, heads, C / heads) by a size list.
@torch.library.custom_op("prunefx_test::split_heads", mutates_args=())
def split_heads(x: torch.Tensor, shape: list[int]) -> torch.Tensor:
    return x.reshape(shape).clone()


@split_heads.register_fake
def _(x, shape):
    return x.new_empty(shape)


SPLIT_HEADS = torch.ops.prunefx_test.split_heads.default


class WithHeads(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(6, 32)
        self.b = nn.Linear(8, 5, bias=False)  # a zeroed head then adds nothing to the sum over heads

    def forward(self, x):
        return self.b(split_heads(torch.relu(self.a(x)), [x.shape[0], 4, 8])).sum(1)


@pytest.fixture
def no_heads_rule_afterwards():
    yield
    RULES.pop(SPLIT_HEADS, None)
    LITERAL_REWRITES.pop(SPLIT_HEADS, None)


def test_a_custom_op_with_a_size_argument_registers_how_that_argument_is_rewritten(no_heads_rule_afterwards,
                                                                                   removal_is_exact):
    """The rule alone says which dims carry which channels; the rewrite says how the op's literal size
    list changes when heads go. Both live in the same registration, and pruning a head is exact."""
    from prunefx.graph.channels.rules_reshape import view

    def heads_rule(ctx, node):  # the same dims as a view: (B, 32) -> (B, 4, 8)
        return view(ctx, node)

    def rewrite_shape(node, analysis, removed):
        keep = [int(keep_mask(analysis, labels, removed).sum()) for labels in analysis.node_labels[node]]
        node.args = (node.args[0], keep)

    prunefx.channel_rule(SPLIT_HEADS, rewrite=rewrite_shape)(heads_rule)
    torch.manual_seed(0)
    model, x = WithHeads().eval(), torch.randn(2, 6)
    program = prunefx.capture(model, x).eval()
    combing = find_channel_groups(program.module)
    heads = next(g for g in combing.groups if g.size == 4 and ("a.weight", 0) in g.members)
    removal_is_exact(program, combing, {int(heads.classes[1])}, x)  # one head of four: 8 features
    assert program.module.a.weight.shape[0] == 24
    call = next(node for node in program.graph.nodes if node.target is SPLIT_HEADS)
    assert list(call.args[1]) == [2, 3, 8]


@torch.library.custom_op("prunefx_test::plus_one", mutates_args=())
def plus_one(x: torch.Tensor) -> torch.Tensor:
    return x + 1.0


@plus_one.register_fake
def _(x):
    return torch.empty_like(x)


class PlusOneSummed(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x):
        return plus_one(self.conv(x)).sum(1)


@pytest.fixture
def no_plus_one_rule_afterwards():
    yield
    RULES.pop(torch.ops.prunefx_test.plus_one.default, None)


def test_a_custom_op_that_makes_zero_channels_nonzero_makes_its_group_inexact(no_plus_one_rule_afterwards):
    """The user's rule says element-wise (in its own function, as channel_rule's example writes it), and the op
    adds 1: a zero channel comes out as 1, which the sum over the channels adds in."""
    @prunefx.channel_rule(torch.ops.prunefx_test.plus_one.default)
    def elementwise(ctx, node):
        return list(ctx.labels(node.args[0]))

    program = prunefx.capture(PlusOneSummed().eval(), torch.randn(1, 3, 8, 8)).eval()
    assert [group.exact for group in find_channel_groups(program.module).groups] == [False]
