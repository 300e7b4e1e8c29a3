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


def test_the_worst_output_error_over_the_largest_output_magnitude_of_the_reference():
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
    error = max(np.abs(a - b).max() for a, b in zip(want, got))
    scale = max(np.abs(a).max() for a in want)
    assert parity.max_abs_error == pytest.approx(error, rel=1e-12) and parity.output_scale == pytest.approx(scale)
    assert parity.relative == pytest.approx(error / scale, rel=1e-12) and 0 < parity.relative < 1
    assert program_parity(reference, reference).relative == 0


def test_programs_with_other_outputs_are_refused_in_one_line():
    x = torch.randn(1, 3, 8, 8)
    one = capture(torch.nn.Conv2d(3, 4, 3).eval(), x)
    two = capture(_TwoHeads().eval(), x)
    with pytest.raises(ParityError, match="has 2 output"):
        program_parity(one, two)
