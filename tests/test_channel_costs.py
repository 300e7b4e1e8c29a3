"""Latency-aware channel selection: per-group channel costs steer the global ranking, and the runtime
measures them on real exported variants (measured end to end by `prunefx prune --latency-aware` in
test_cli.py; no timing thresholds here: speed belongs in benchmarks/)."""

import numpy as np
import pytest
import torch

from prunefx.graph import PrunefxError, capture
from prunefx.graph.channel_groups import find_channel_groups
from prunefx.models import build_model
from prunefx.passes.remove_channels import remove_channels
from prunefx.runtime.channel_latency import _with_floor, _without_half_of


@pytest.fixture(scope="module")
def resnet20():
    torch.manual_seed(0)
    return capture(build_model("prunefx:resnet20").module, torch.randn(1, 1, 28, 28), name="resnet20").eval()


def _widths(stats) -> dict[int, int]:
    return {g["id"]: g["width_after"] for g in stats["groups"]}


def test_an_expensive_group_loses_more_channels_at_the_same_macs(resnet20):
    plain = remove_channels(resnet20.clone(), config={"macs": 0.5, "round_to": 4}).stats
    expensive = plain["groups"][0]["id"]  # group 0 made ten times as costly per channel as the others

    def costs(program, combing):
        return [10.0 if g.id == expensive else 1.0 for g in combing.groups]

    steered = remove_channels(resnet20.clone(), config={"macs": 0.5, "round_to": 4, "channel_costs": costs}).stats
    assert steered["target"]["met"]
    assert _widths(steered)[expensive] < _widths(plain)[expensive]
    assert steered["groups"][0]["cost_per_channel"] == 10.0


@pytest.mark.parametrize("config, message", [
    ({"channel_costs": lambda program, combing: [1.0] * len(combing.groups), "ranking": "local"},
     "only apply to the global ranking"),
    ({"channel_costs": lambda program, combing: [1.0]}, "one positive number per channel group"),
    ({"channel_costs": lambda program, combing: [-1.0] * len(combing.groups)}, "one positive number"),
    ({"channel_costs": [1.0, 2.0]}, "must be a callable"),
])
def test_bad_channel_costs_are_refused(resnet20, config, message):
    with pytest.raises(PrunefxError, match=message):
        remove_channels(resnet20.clone(), config={"macs": 0.5, **config})


def test_a_variant_loses_half_of_one_group_and_nothing_else(resnet20):
    combing = find_channel_groups(resnet20.module)
    group = max(combing.groups, key=lambda g: g.size)
    variant, removed = _without_half_of(resnet20, group, step=4)
    assert removed == group.size // 2
    before = {n: p.shape for n, p in resnet20.module.named_parameters()}
    changed = {n: p.shape for n, p in variant.module.named_parameters() if p.shape != before[n]}
    assert changed
    for name, shape in changed.items():  # one dim per tensor, from the group's width to half of it
        assert [(old, new) for old, new in zip(before[name], shape) if old != new] == [(group.size, group.size // 2)]
    assert variant(torch.randn(1, 1, 28, 28)).shape == (1, 10)
    assert all(resnet20.module.get_parameter(n).shape == before[n] for n in changed)  # the original is untouched


def test_unmeasured_or_negative_savings_get_a_small_floor():
    costs = _with_floor(np.array([0.2, 0.4, float("nan"), -0.1, 0.0]))
    assert costs[:2].tolist() == [0.2, 0.4]
    assert costs[2:].tolist() == pytest.approx([0.05 * 0.3] * 3)
