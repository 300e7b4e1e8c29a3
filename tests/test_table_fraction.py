"""benchmarks/table_fraction.py: the latency choice at a given MACs fraction. With a table whose times are
proportional to each layer's MACs (no timing, so no noise), the choice must land within its tolerance of the
target; the oracle is prunefx's MAC counter on the pruned model."""

from __future__ import annotations

import math

import pytest

from prunefx.graph import count
from prunefx.loading import model_and_program
from prunefx.runtime.tables.table import program_latency_table

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]


class MacsTimer:
    """A layer's "time" is its multiply-accumulates per image, in millions: a table that predicts MACs."""

    backend, device, precision, settings = "fake", "fake", "fp32", "ms proportional to MACs"

    def __call__(self, layer) -> float:
        if layer.kind == "linear":
            return 1e-6 * layer.in_channels * layer.out_channels
        positions = math.prod(layer.input_shape[2:]) / math.prod(layer.stride)
        return 1e-6 * layer.in_channels * layer.out_channels * math.prod(layer.kernel) * positions / layer.groups


@pytest.mark.parametrize("target", [0.3, 0.7])
def test_the_latency_choice_lands_at_the_target_macs(load_script, target):
    table_fraction = load_script("benchmarks/table_fraction.py")
    _, dense = model_and_program("prunefx:resnet20")
    table = program_latency_table(dense, MacsTimer(), multiple=8, batch=1, cache_dir=None)
    program, kept, fraction = table_fraction.at_macs(dense, table, target, {})
    assert kept == pytest.approx(count(program).macs / count(dense).macs)
    assert kept == pytest.approx(target, rel=table_fraction.TOLERANCE)
    assert 0.0 < fraction < 1.0
