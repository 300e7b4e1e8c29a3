"""What a model's operators take inside a run, read from ONNX Runtime's own profiler: the time of a run less
what is not its operators' work (the call into ONNX Runtime, copying the input in and the output out) and
less the layout reorders it adds around a lone operator.

A latency table times one layer alone (runtime/tables/timers.py). Alone, ONNX Runtime's CPU provider reorders
the input into its blocked layout (NCHWc) before a convolution and the output back after it; inside a whole
model consecutive convolutions stay blocked and those reorders are not there. On a small layer the reorders
and the call take as long as the convolution, and they grow with the activations, not with the work: timed
with them, a table mistakes where a model's time goes.
"""

from __future__ import annotations

import bisect
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping

import numpy as np
import onnxruntime as ort

from prunefx.runtime.ort.options import session_options

# ONNX Runtime's NCHWc transformer's layout conversions: inside a whole model only at the edges of blocked runs
LAYOUT_OPS = frozenset({"ReorderInput", "ReorderOutput"})
_KERNEL_SUFFIX = "_kernel_time"


def _timed_kernels(events: Iterable[Mapping], skip: int) -> tuple[int, list[tuple[int, int, str, str, float]]]:
    """The runs after the first `skip` (how many) and, in the order they ran, the kernel events of their nodes:
    (run, start, node, operator type, ms), the run counted from the first timed one."""
    events = list(events)
    runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in events
                  if e.get("cat") == "Session" and e.get("name") == "model_run")[skip:]
    starts = [start for start, _ in runs]
    kernels = []
    for event in events:
        if event.get("cat") != "Node" or not event.get("name", "").endswith(_KERNEL_SUFFIX):
            continue
        run = bisect.bisect_right(starts, event["ts"]) - 1
        if run >= 0 and event["ts"] <= runs[run][1]:
            kernels.append((run, event["ts"], event["name"][:-len(_KERNEL_SUFFIX)],
                            event.get("args", {}).get("op_name", "?"), event["dur"] / 1e3))  # microseconds in
    return len(runs), sorted(kernels, key=lambda kernel: kernel[:2])


def kernel_ms_per_run(events: Iterable[Mapping], *, skip: int = 0, left_out: frozenset[str] = LAYOUT_OPS,
                      lead: int = 0) -> list[float]:
    """Milliseconds of operator work in each run of a profile's `events` (its JSON list), the first `skip` runs
    left out: the kernel times of a run's nodes, nodes of the operators `left_out` not counted, nor the first
    `lead` of the others to run (a lead-in that is not the work timed)."""
    count, kernels = _timed_kernels(events, skip)
    per_run: list[list[float]] = [[] for _ in range(count)]
    for run, _, _, op, ms in kernels:
        if op not in left_out:
            per_run[run].append(ms)
    return [sum(times[lead:]) for times in per_run]


def profiled_runs(model: bytes, feed: dict[str, np.ndarray], *, threads: int, spinning: bool, flush_denormals: bool,
                  runs: int) -> list[dict]:
    """The profile events of `runs` runs of `model` in a session with prunefx's timing settings
    (runtime/ort/options.py) and the profiler on; the profile file is removed."""
    with tempfile.TemporaryDirectory(prefix="prunefx-profile-") as folder:
        options = session_options(threads, spinning, flush_denormals, profile_prefix=os.path.join(folder, "layer"))
        session = ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])
        for _ in range(runs):
            session.run(None, feed)
        with open(session.end_profiling(), encoding="utf-8") as file:
            return json.load(file)


def median_kernel_ms(model: bytes, feed: dict[str, np.ndarray], *, threads: int, spinning: bool,
                     flush_denormals: bool, warmup: int, runs: int, lead: int = 0) -> float:
    """The median over `runs` timed runs (after `warmup` untimed ones) of the operator work of a run of `model`
    (kernel_ms_per_run, its first `lead` operators left out)."""
    events = profiled_runs(model, feed, threads=threads, spinning=spinning, flush_denormals=flush_denormals,
                           runs=warmup + runs)
    return float(np.median(kernel_ms_per_run(events, skip=warmup, lead=lead)))


def median_kernel_ms_by(events: Iterable[Mapping], group: Callable[[str], int | None], groups: int, *,
                        skip: int = 0) -> list[float]:
    """For each of `groups` groups of nodes (`group` names a node's, None for nodes of none), the median over the runs
    after the first `skip` of its nodes' kernel milliseconds in a run, layout reorders left out."""
    count, kernels = _timed_kernels(events, skip)
    per_run = np.zeros((groups, count))
    for run, _, name, op, ms in kernels:
        index = group(name)
        if index is not None and op not in LAYOUT_OPS:
            per_run[index, run] += ms
    return [float(value) for value in np.median(per_run, axis=1)]


def kernel_ms_by_operator(events: Iterable[Mapping], *, skip: int = 0) -> dict[str, float]:
    """Milliseconds per run of each operator type in a profile's `events`, over the runs after the first `skip`
    (layout reorders included, as ReorderInput and ReorderOutput): where a whole model's time goes."""
    count, kernels = _timed_kernels(events, skip)
    totals: dict[str, float] = {}
    for _, _, _, op, ms in kernels:
        totals[op] = totals.get(op, 0.0) + ms
    return {op: ms / count for op, ms in sorted(totals.items(), key=lambda item: -item[1])}


def kernel_ms_by_node(events: Iterable[Mapping], *, skip: int = 0) -> dict[str, tuple[str, float]]:
    """For each node that ran, in the order the nodes first ran: its operator type and the median over the runs
    after the first `skip` of its kernel milliseconds in a run (nodes as ONNX Runtime runs them: after its graph
    optimisations, fused nodes under one name and its layout reorders among them)."""
    count, kernels = _timed_kernels(events, skip)
    per_run: dict[str, list[float]] = {}
    ops: dict[str, str] = {}
    for run, _, name, op, ms in kernels:
        ops.setdefault(name, op)
        per_run.setdefault(name, [0.0] * count)[run] += ms
    return {name: (ops[name], float(np.median(times))) for name, times in per_run.items()}
