"""The latency choice at a given MACs fraction: remove_channels to a fraction of a per-layer latency table's time
(channels going by importance lost per millisecond saved), with that fraction searched until the pruned model
keeps `target` of the dense model's MACs within 3 %. Nothing is timed: the table predicts, `count` checks.

Shared by latency_aware_choice.py (ONNX Runtime) and gpu_speedup.py (cuda), so that both compare the two
choices at equal MACs the same way."""

from __future__ import annotations

from prunefx.graph import Program, count
from prunefx.passes.remove_channels import remove_channels

TOLERANCE = 0.03


def pruned_to_table_time(dense: Program, fraction: float, table, options: dict) -> Program:
    """The dense model with channels removed to `fraction` of its table time (as far as the floors allow)."""
    program = dense.clone()
    remove_channels(program, config={"layer_time": fraction, "latency_table": table, "strict": False, **options})
    return program


def at_macs(dense: Program, table, target: float, options: dict, steps: int = 10) -> tuple[Program, float, float]:
    """(program, MACs kept, table fraction) of the latency choice whose MACs are nearest `target` (a fraction of
    the dense model's), by bisection on the table fraction; stops early within TOLERANCE."""
    dense_macs = count(dense).macs
    low, high, fraction, best = 0.05, 1.0, target, None
    for _ in range(steps):
        program = pruned_to_table_time(dense, fraction, table, options)
        kept = count(program).macs / dense_macs
        if best is None or abs(kept - target) < abs(best[1] - target):
            best = (program, kept, fraction)
        if abs(kept - target) <= TOLERANCE * target:
            break
        low, high = (fraction, high) if kept < target else (low, fraction)
        fraction = 0.5 * (low + high)
    return best
