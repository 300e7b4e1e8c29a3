"""Typed facts: what a composite pass reads from an inner pass's Result is a declared dataclass, checked on
read, never a key of the inner pass's report. The facts agree with the report on a real model."""

import pytest
import torch
import torchvision

from prunefx.graph import capture
from prunefx.passes.fold_batchnorm import Folded, fold_batchnorm
from prunefx.passes.quantize_int8 import Quantized, quantize_int8
from prunefx.passes.removal.channels_removed import ChannelsRemoved
from prunefx.passes.remove_channels import remove_channels

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return capture(torchvision.models.resnet18(num_classes=10).eval(), torch.randn(1, 3, 32, 32), name="resnet18")


def test_facts_agree_with_the_report(resnet):
    folded = fold_batchnorm(resnet.clone())
    assert folded.facts_as(Folded).folded == folded.stats["folded"] == 20  # every BN of ResNet-18 follows a conv
    quantized = quantize_int8(resnet.clone(), config={"calibration": [torch.randn(1, 3, 32, 32)]})
    facts = quantized.facts_as(Quantized)  # the layers apart from the residual adds and the pool
    assert facts.layers + facts.adds_and_pools == len(quantized.stats["quantized"]) > 0
    assert facts.layers == quantized.stats["weight_quantizers"] == 21
    removed = remove_channels(resnet.clone(), config={"macs": 0.5, "importance": "l2"})
    facts = removed.facts_as(ChannelsRemoved)
    assert (facts.macs_before, facts.macs_after, facts.params_after, facts.channels_removed) == tuple(
        removed.stats[key] for key in ("macs_before", "macs_after", "params_after", "channels_removed"))
    assert facts.macs_kept == pytest.approx(removed.stats["macs_after"] / removed.stats["macs_before"])
    assert 0.4 < facts.macs_kept < 0.6


def test_facts_of_another_kind_are_refused(resnet):
    result = fold_batchnorm(resnet.clone())
    with pytest.raises(TypeError, match="expected Quantized facts from the pass, not Folded"):
        result.facts_as(Quantized)
