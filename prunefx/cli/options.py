"""What a command reads back from the shared measuring flags (prunefx/cli/flags.py makes them) once its
arguments are parsed: the checks of the budget backend, the one Measurement every measurement of the run is
made from, and the measuring functions the budget passes and the speed-up checks are handed.
"""

from __future__ import annotations

import contextlib

from prunefx.budget.outcome import MeasuredOn
from prunefx.graph.errors import PrunefxError
from prunefx.runtime import backends
from prunefx.runtime.measure.pairs import Measurement, require_backend
from prunefx.runtime.measure.speedup import closed_after
from prunefx.runtime.onnx.opsets import DEFAULT_OPSET


def check_budget_backend(args, *, budgeted: bool, measures: bool = False, or_else: str = "") -> None:
    """Refuse backend options with nothing to measure (no budget, and no pass that times what it keeps when
    `measures` is false; `or_else` names what else would), a flag the backend does not read, and a backend that
    is not installed, in one line and before any model is loaded; fill in the backend's precision."""
    default = backends.names(budgets=True)[0]
    if not (budgeted or measures) and (args.backend != default or args.precision is not None or getattr(args, "batch", 1) != 1
                         or getattr(args, "compile", False)):
        raise PrunefxError("--backend, --precision, --batch and --compile say where --speedup/--latency-ms is "
                           f"measured: give a budget{or_else}")
    chosen = backends.get(args.backend)
    if args.trtexec and "trtexec" not in chosen.options:
        raise PrunefxError("--trtexec applies to --backend trtexec")
    if getattr(args, "compile", False) and "compile" not in chosen.options:
        compiling = [backend.name for backend in backends.backends() if "compile" in backend.options]
        raise PrunefxError(f"--compile applies to --backend {', '.join(compiling)}")
    require_backend(args.backend, args.precision, args.trtexec, batch=getattr(args, "batch", 1),
                    compile=getattr(args, "compile", False))
    args.precision = args.precision or chosen.default_precision


def measurement(args) -> Measurement:
    """The command line's one Measurement: its backend and every setting it measures with."""
    return Measurement.of(args.backend, threads=args.threads, runs=args.runs, precision=args.precision,
                          trtexec=args.trtexec, batch=getattr(args, "batch", 1), compile=getattr(args, "compile", False),
                          opset=getattr(args, "opset", DEFAULT_OPSET))


def budget_latency(args):
    """The budget passes' measuring function on the command line's backend (runtime/measure/pairs.py)."""
    return measurement(args).pair()


def budget_measurer(args, *, budgeted: bool) -> contextlib.AbstractContextManager:
    """`budget_latency(args)` for a budgeted run (None for another), kept until the block ends and then closed: the
    command writes its deliverable inside, and the file the search exported of the chosen model is copied
    (runtime/onnx/export_memo.py) where a second export would take seconds to minutes."""
    return closed_after(budget_latency(args) if budgeted else None)


def pass_measure(args):
    """`(before, after) -> speed-up` on the command line's backend, for passes that keep only what runs faster
    (merge_blocks' `measure`)."""
    return measurement(args).speedup()


def measured_on(args) -> dict:
    """Where and how a budget is measured, as report.json's `budget` says it."""
    return MeasuredOn.of(measurement(args)).to_dict()
