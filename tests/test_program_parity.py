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



def test_outputs_that_no_input_changes_compare_nothing():
    """A head whose weights are zero returns its bias whatever comes before it: two models that differ before the
    head read as exact. outputs_constant says so, whether the bias is zero or not; a model whose outputs move
    with the input is not constant, even compared with itself."""
    torch.manual_seed(0)
    model, x = _TwoHeads().eval(), torch.randn(2, 3, 8, 8)
    moving = capture(model, x)
    for bias in (0.0, 0.5):
        with torch.no_grad():
            for head in (model.small, model.large):
                head.weight.zero_()
                head.bias.fill_(bias)
        constant = capture(model, x)
        with torch.no_grad():
            model.body.weight.mul_(2)  # another body, the same outputs
            other_body = capture(model, x)
            # the oracle: the outputs on another input, compared by hand
            assert all(torch.equal(a, b) for a, b in zip(constant(x).values(), constant(-3 * x).values()))
        parity = program_parity(constant, other_body)
        assert parity.outputs_constant and parity.relative == 0 and parity.entry()["outputs_constant"] is True
    exact = program_parity(moving, moving)
    assert exact.relative == 0 and not exact.outputs_constant
