"""program_parity (runtime/onnx/parity.py): one Program against another as check_parity measures a file, checked
against numpy on the two models' own outputs."""

import numpy as np
import pytest
import torch

from prunefx.graph import capture
from prunefx.runtime import ParityError, program_parity


class _TwoHeads(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.body, self.small, self.large = torch.nn.Conv2d(3, 4, 3), torch.nn.Linear(4, 2), torch.nn.Linear(4, 5)

    def forward(self, x):
        pooled = self.body(x).mean((2, 3))
        return {"small": self.small(pooled), "large": 10 * self.large(pooled)}


def test_the_worst_output_relative_to_its_own_magnitude():
    torch.manual_seed(0)
    model, x = _TwoHeads().eval(), torch.randn(2, 3, 8, 8)
    reference = capture(model, x)
    with torch.no_grad():
        model.small.weight.add_(0.01)
        model.large.bias.sub_(0.02)
    other = capture(model, x)
    parity = program_parity(reference, other)
    with torch.no_grad():
        want = [t.double().numpy() for t in reference(x).values()]
        got = [t.double().numpy() for t in other(x).values()]
    errors = [(np.abs(a - b).max(), np.abs(a).max()) for a, b in zip(want, got)]
    error, scale = max(errors, key=lambda pair: pair[0] / pair[1])
    assert parity.max_abs_error == pytest.approx(error, rel=1e-12) and parity.output_scale == pytest.approx(scale)
    assert parity.relative == pytest.approx(error / scale, rel=1e-12) and 0 < parity.relative < 1
    assert program_parity(reference, reference).relative == 0


class _BoxesAndScores(torch.nn.Module):
    def __init__(self, squash=torch.sigmoid):
        super().__init__()
        self.body, self.squash = torch.nn.Conv2d(3, 4, 3), squash

    def forward(self, x):
        features = self.body(x)
        return 640 * features, self.squash(features)  # boxes in pixels, scores in (0, 1)


def test_a_wrong_small_output_is_not_hidden_by_a_large_one():
    torch.manual_seed(0)
    model, x = _BoxesAndScores().eval(), torch.randn(1, 3, 8, 8)
    reference = capture(model, x)
    model.squash = torch.nn.functional.softsign  # every score wrong; the boxes exact
    parity = program_parity(reference, capture(model, x))
    assert parity.relative > 0.1 and not parity.within(1e-3)
    assert parity.outputs[0].max_abs_error == 0 and parity.output_scale < 1  # read on the scores' own scale


def test_programs_with_other_outputs_are_refused_in_one_line():
    x = torch.randn(1, 3, 8, 8)
    one = capture(torch.nn.Conv2d(3, 4, 3).eval(), x)
    two = capture(_TwoHeads().eval(), x)
    with pytest.raises(ParityError, match="has 2 output"):
        program_parity(one, two)


def test_outputs_zero_on_both_sides_compare_nothing():
    """A zero-initialised head: every output 0 in both models, so any change before it reads as exact. all_zero
    says so; an output zero on one side only is infinitely wrong, not all_zero."""
    torch.manual_seed(0)
    model, x = _TwoHeads().eval(), torch.randn(2, 3, 8, 8)
    before = capture(model, x)
    with torch.no_grad():
        for head in (model.small, model.large):
            head.weight.zero_()
            head.bias.zero_()
    zero = capture(model, x)
    with torch.no_grad():
        model.body.weight.mul_(2)  # another body, the same zeros out
    other_body = capture(model, x)
    with torch.no_grad():
        assert not any(t.any() for t in zero(x).values())  # the oracle: nothing but zeros
    parity = program_parity(zero, other_body)
    assert parity.all_zero and parity.relative == 0 and parity.entry()["outputs_all_zero"] is True
    assert not program_parity(before, before).all_zero
    one_sided = program_parity(zero, before)
    assert one_sided.relative == float("inf") and not one_sided.all_zero
