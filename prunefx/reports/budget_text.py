"""The lines `prunefx prune` and `prunefx depth` print for a budget search: every candidate measured (with
its first measurement when a confirmation replaced it, and the confirmation's interval on the speed-up),
then the budget met."""

from __future__ import annotations

from collections.abc import Callable

from prunefx.graph.timing import busy_share, confidence_text, share_text
from prunefx.runtime import backends


def measured_candidates(budget: dict) -> int:
    """The candidates a search measured: a step that found an earlier one's widths again is not one more."""
    return sum("same_widths_as" not in row for row in budget["trace"])


def search_lines(budget: dict, *, candidate: Callable[[dict], str] = lambda row: "", chosen: str = "") -> list[str]:
    """`budget` is a budget pass's statistics (trace, speedup, ms, dense_ms; `backend` and `precision` where the
    command recorded them, ONNX Runtime otherwise); `candidate` says what a trace row
    measured, put before its figures (e.g. '3 blocks, '), `chosen` ends the last line."""
    lines = []
    for row in budget["trace"]:
        if "same_widths_as" in row:  # a step that landed on an earlier candidate's widths shares its measurement
            lines.append(f"  candidate: {row['macs_kept']:.3f} of the MACs again (the widths of candidate "
                         f"{row['same_widths_as'] + 1}, not measured again)")
            continue
        how = "measured longer" if row.get("longer") else "confirmed"  # longer: after a confirmation that did not settle
        confirmed = (f"; {how}{interval_text(row.get('interval'))}, first measured {row['first']['speedup']:.2f}x"
                     f"{busy_text(row['first'], ' while ')}" if row.get("first") else "")
        lines.append(f"  candidate: {candidate(row)}{row['macs_kept']:.3f} of the MACs -> "
                     f"{row['speedup']:.2f}x ({row['ms']:.2f} ms vs {row['dense_ms']:.2f} ms dense, spread "
                     f"{row['spread']:.0%}{confirmed}{busy_text(row, '; measured while ')})")
    backend = budget.get("backend", "ort")  # reports written before backends were recorded: ONNX Runtime
    runtime = backends.label(backend)
    precision = f" {budget['precision']}" if budget.get("precision") not in (None, "fp32") else ""
    precision += f" at batch {budget['batch']}" if budget.get("batch", 1) != 1 else ""
    lines.append(f"budget {budget['budget']} met: {budget['speedup']:.2f}x measured on {runtime}{precision} "
                 f"({budget['ms']:.2f} ms vs {budget['dense_ms']:.2f} ms dense{interval_text(budget.get('interval'), ', ')}) "
                 f"{chosen}")
    return lines + _above_window(budget) + _measured_busy(budget.get("chosen", {}))


def busy_text(row: dict, lead: str) -> str:
    """`lead` + 'other processes took 41 % of the cores' for a reading taken on a busy machine (Timing.busy)."""
    contention = row.get("contention")
    return f"{lead}{share_text(contention)}" if busy_share(contention) else ""


def _measured_busy(chosen: dict) -> list[str]:
    """A line where the accepted figures were measured on a busy machine (after measuring longer, where the
    measurer could)."""
    said = busy_text(chosen, "")
    if not said:
        return []
    return [f"  measured on a busy machine: {said} while the accepted figures were measured; they may be off: run "
            f"again with nothing else running"]


def _above_window(budget: dict) -> list[str]:
    """A line where the model returned is faster than the budget's window (report.json's `window_top`)."""
    top = budget.get("window_top")
    if top is None or budget["speedup"] <= top:
        return []
    return [f"  above the window: {budget['speedup']:.2f}x, where the budget's tolerance ends at {top:.2f}x; no "
            f"candidate measured landed inside it, and this one is pruned further than the budget needs (accuracy "
            f"lost for nothing): run again with nothing else running, or with a larger --max-candidates or --tolerance"]


def interval_text(interval: dict | None, lead: str = " ") -> str:
    """' 90 % interval 1.95-2.25' for a confirmation's interval (report.json's), '' for none or a point."""
    if not interval or interval.get("method") == "point":
        return ""
    return f"{lead}{confidence_text(interval['confidence'])} interval {interval['low']:.2f}-{interval['high']:.2f}"
