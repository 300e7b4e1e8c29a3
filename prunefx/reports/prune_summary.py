"""The lines `prunefx prune` prints once its output is written, read from its report.json."""

from __future__ import annotations

from pathlib import Path

from prunefx.graph.counted import counted
from prunefx.reports.budget_text import measured_candidates, search_lines
from prunefx.reports.parity_text import parity_words


def macs_line(before: int, after: int, batch: int) -> str:
    """The MACs before and after, of the whole batch the model was captured at (as report.json counts them)."""
    images = f", for a batch of {batch} images" if batch > 1 else ""
    return f"MACs   {before / 1e6:.1f} M -> {after / 1e6:.1f} M ({after / before:.3f}){images}"


def summary_lines(report: dict, output: Path, batch: int = 1) -> list[str]:
    """What `prunefx prune` prints once it has written `output`: from its report, the search (a budget), the costs
    before and after (`batch`: the images they are counted over), the groups narrowed and blocked, compensation,
    recalibration, parity and the files."""
    lines: list[str] = []
    params = report["params_after"] / report["params_before"]
    changed = sum(g["width_after"] != g["width_before"] for g in report["groups"])
    if report["budget"]:
        budget = report["budget"]
        lines += search_lines(budget, chosen=f"after {counted(measured_candidates(budget), 'candidate')}")
    lines.append(macs_line(report["macs_before"], report["macs_after"], batch))
    lines.append(f"params {report['params_before'] / 1e6:.2f} M -> {report['params_after'] / 1e6:.2f} M ({params:.3f})")
    lines += _table_line((report.get("target") or {}).get("table_ms"))
    blocked_by = sorted({op for block in report["blocked"] for op in block["operators"]})
    lines.append(f"groups {changed} of {len(report['groups'])} narrowed; {len(report['blocked'])} blocked"
                 + (f" by {', '.join(blocked_by)}" if blocked_by else ""))
    lines += _too_few_rows(report.get("importance_uncompensated") or [])
    compensation = report["compensation"] or {"compensated": [], "skipped": []}
    layers, skipped = compensation["compensated"], compensation["skipped"]
    if layers:
        mean = [sum(layer[key] for layer in layers) / len(layers) for key in ("error_without", "error_with")]
        lines.append(f"compensated {counted(len(layers), 'layer')} ({len(skipped)} skipped): relative "
                     f"output error on the calibration data {mean[0]:.3g} -> {mean[1]:.3g} (mean over layers)")
    elif skipped:  # every layer that lost inputs was one compensation cannot update
        lines.append(f"compensated no layer ({counted(len(skipped), 'layer')} skipped)")
    recalibration = report["recalibrate_batchnorm"]
    if recalibration:
        lines.append(f"recalibrated {recalibration['recalibrated']} of {recalibration['batch_norms']} batch norms on "
                     f"{recalibration['images']} images" if recalibration["batch_norms"] else
                     "no batch norms to recalibrate")
    lines.append(f"parity torch vs ONNX Runtime: {parity_words(report['parity'])}")
    written = [output / name for name in ("model.pt2", "model.onnx", "report.json")]
    if (report.get("module") or {}).get("written"):
        written.append(output / report["module"]["file"])
    lines.append(f"wrote {', '.join(map(str, written))}")
    return lines


def _table_line(table_ms: dict | None) -> list[str]:
    """What the latency table predicted for the widths chosen by it (--choose-by latency at a MACs target), beside
    the widths the target gives without it: the time of the timed layers (convolutions, linear layers, attention, layer norms)."""
    if not table_ms or "without_table" not in table_ms:
        return []
    dense, planned, without = table_ms["dense"], table_ms["planned"], table_ms["without_table"]
    same = " (the same widths: no faster choice lost no more importance)" if planned == without else ""
    return [f"table  {dense:.3f} ms -> {planned:.3f} ms chosen by latency, {without:.3f} ms chosen by MACs{same} "
            "(the timed layers)"]


def _too_few_rows(layers: list[dict]) -> list[str]:
    """The layers obs scored without compensation: their calibration rows could not tell a compensation from a fit."""
    if not layers:
        return []
    first = layers[0]
    others = f" and {counted(len(layers) - 1, 'other layer')}" if len(layers) > 1 else ""
    return [f"scored without compensation: {first['layer']}{others} (fewer calibration rows than input columns: "
            f"{first['rows']} for {first['columns']}); more calibration images would let obs compensate there"]
