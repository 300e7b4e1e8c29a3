"""Measured latency of a channel, per channel group: the cost model of latency-aware channel pruning.

MACs say little about latency where a layer is bound by memory traffic (depthwise convolutions,
activations and norms at high resolution, narrow layers): a MobileNetV2 channel of an early block
costs far more time per MAC than one of the last block. `onnx_channel_costs` measures instead. For
every channel group it removes about half of the group's channels (a width the selection could
choose: a multiple of `round_to`), exports that variant at batch 1 and times it in ONNX Runtime
alternately with the dense model; the group's cost is the time saved per removed channel.
`remove_channels` takes the result through its `channel_costs` option (passes never import the
runtime: DESIGN.md, layering) and ranks channels by importance per millisecond instead of per channel.

A group whose removal saves no measurable time (noise, or a runtime that pads widths anyway), or
that cannot be cut to a smaller allowed width, gets a small floor cost rather than zero or a negative one, so that it is pruned last, never first.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from tqdm import tqdm

from prunefx.graph import Program
from prunefx.graph.channel_groups import Combing, find_channel_groups
from prunefx.graph.channel_removal import remove_classes
from prunefx.graph.channel_selection import allowed_widths, width_steps
from prunefx.runtime.latency import compare_latency
from prunefx.runtime.onnxruntime_session import DEFAULT_THREADS
from prunefx.runtime.speedup import batch_runner

ChannelCosts = Callable[[Program, Combing], list[float]]

# Fraction of the median measured cost given to groups that saved nothing measurable.
FLOOR_FRACTION = 0.05


def onnx_channel_costs(*, round_to: int = 8, threads: int = DEFAULT_THREADS, runs: int = 30, warmup: int = 5,
                       progress: bool | None = None) -> ChannelCosts:
    """A `(program, combing) -> milliseconds saved per channel of each group` callable (ONNX Runtime, batch 1)."""
    def measure(program: Program, combing: Combing) -> list[float]:
        with tempfile.TemporaryDirectory(prefix="prunefx-channel-costs-") as tmp:
            dense = batch_runner(program, Path(tmp) / "dense.onnx", 1, threads)
            steps = width_steps(combing.analysis, combing.groups, round_to)
            saved = []
            for group, step in tqdm(list(zip(combing.groups, steps)), desc="timing channel groups", unit="group",
                                    disable=progress is False):
                variant, removed = _without_half_of(program, group, step)
                if removed == 0:
                    saved.append(float("nan"))
                    continue
                runner = batch_runner(variant, Path(tmp) / f"group{group.id}.onnx", 1, threads)
                timing = compare_latency(dense, runner, warmup=warmup, runs=runs, threads=threads)
                saved.append((timing.a.median_ms - timing.b.median_ms) / removed)
        return _with_floor(np.array(saved, dtype=float)).tolist()

    return measure


def _without_half_of(program: Program, group, step: int) -> tuple[Program, int]:
    """A copy of `program` without about half of `group`'s channels (an allowed width), and how many went."""
    widths = allowed_widths(group.size, step, max_ratio=0.99)
    kept = int(widths[np.argmin(np.abs(widths - group.size / 2))])
    if kept == group.size:
        return program, 0
    variant = program.clone().eval()
    combing = find_channel_groups(variant.module)
    same = [g for g in combing.groups if g.members == group.members]
    if len(same) != 1:  # combed with `keep`, a group can differ from the unconstrained one: left unmeasured
        return program, 0
    remove_classes(variant.module, combing.analysis, {int(c) for c in same[0].classes[kept:]})
    variant.recompile()
    return variant, group.size - kept


def _with_floor(saved: np.ndarray) -> np.ndarray:
    """Unmeasured (nan) and non-positive savings become a small positive cost: pruned last, not first."""
    measured = saved[np.isfinite(saved) & (saved > 0)]
    floor = FLOOR_FRACTION * float(np.median(measured)) if measured.size else 1.0
    return np.where(np.isfinite(saved) & (saved > floor), saved, floor)
