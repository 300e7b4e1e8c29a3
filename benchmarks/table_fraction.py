"""The latency choice at a given MACs fraction: remove_channels to `target` of the dense model's MACs with a
per-layer latency table: the plan the table says is fastest among those that reach the MACs and lose no more
importance than the MACs choice (graph/channels/latency_selection.py). Nothing is timed: the table predicts,
`count` checks.

Shared by latency_aware_choice.py (ONNX Runtime) and gpu_speedup.py (cuda), so that both compare the two
choices at equal MACs the same way."""

from __future__ import annotations

from prunefx.graph import Program, count
from prunefx.graph.channels.timed_layers import timed_layers
from prunefx.passes.remove_channels import remove_channels

TOLERANCE = 0.03  # remove_channels' own (graph/channels/selection.TARGET_TOLERANCE): a plan within it is met


def at_macs(dense: Program, table, target: float, options: dict) -> tuple[Program, float, float]:
    """(program, MACs kept, fraction of the table's time kept) of the latency choice at `target` of the dense
    model's MACs; where the widths cannot land within TOLERANCE, the nearest plan (its MACs kept say so)."""
    result = remove_channels(dense.clone(), config={"macs": target, "latency_table": table, "strict": False,
                                                    **options})
    table_ms = result.stats["target"]["table_ms"]
    return result.program, count(result.program).macs / count(dense).macs, table_ms["planned"] / table_ms["dense"]


def table_ms(table, program: Program) -> float:
    """What the latency table says the program's timed layers take, each at its widths: beside the whole model's
    measured time, how far the table's prediction is from it."""
    return sum(table(layer, layer.in_channels, layer.out_channels) for layer in timed_layers(program.module))
