"""The budget choice in `prunefx compress`'s report: every combination choose_for_budget tried (width,
depth, INT8 and their mixes), as a table and as a PNG of the damage proxy against measured latency, so a
user sees what each dimension would have cost, not only what was chosen."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from prunefx.graph.counted import counted
from prunefx.graph.whole_files import file_path, replaced_whole
from prunefx.runtime.measure.deployment_report import figure_classes

BUDGET_CHART_FILE = "budget_candidates.png"


def budget_stats(report: Mapping) -> dict | None:
    """The statistics of the report's budget choice (the last choose_for_budget pass), or None."""
    chosen = [step["stats"] for step in report.get("passes", []) if step["pass"] == "choose_for_budget"]
    return chosen[-1] if chosen else None


def _name(row: Mapping) -> str:
    return " + ".join(row["dimensions"])


def depth_done(row: Mapping) -> str:
    """What the depth route did to its blocks: merged them, or dropped their residual branches."""
    return "dropped" if row.get("depth_route") == "drop" else "merged"


def _setting(row: Mapping) -> str:
    parts = []
    if row.get("macs_fraction") is not None:
        parts.append(f"width to {row['macs_fraction']:.3f} of the MACs")
    if row.get("blocks") is not None:
        parts.append(f"{counted(len(row['blocks']), 'block')} {depth_done(row)}")
    if row.get("int8_layers") is not None:
        parts.append(f"{row['int8_layers']} INT8 layers")
    return ", ".join(parts) or "-"


def _interval(row: Mapping) -> str:
    """' [1.98, 2.11]': the confirmation's interval, when it has one (budget/search.py's Measured.to_dict)."""
    interval = row.get("interval") or {}
    return f" [{interval['low']:.2f}, {interval['high']:.2f}]" if interval.get("method") not in (None, "point") else ""


def budget_markdown(stats: Mapping, chart: str | None = BUDGET_CHART_FILE) -> str:
    lines = [f"## Budget: {stats['budget']}", "",
             f"Chosen: **{' + '.join(stats['chosen'])}**, {stats['speedup']:.2f}x measured ({stats['ms']:.2f} ms "
             f"vs {stats['dense_ms']:.2f} ms dense), the least one-shot damage (KL of the outputs from the dense "
             "model's on the calibration batches) among the combinations that met the budget.", "",
             "| combination | setting | met | measured speed-up [90 % interval] | ms | MACs kept | KL damage | note |",
             "|---|---|---|---|---|---|---|---|"]
    for row in stats["candidates"]:
        speedup = f"{row['speedup']:.2f}x{_interval(row)}" if row.get("speedup") is not None else "n/a"
        ms = f"{row['ms']:.2f}" if row.get("ms") is not None else "n/a"
        macs = f"{row['macs_kept']:.3f}" if row.get("macs_kept") is not None else "n/a"
        proxy = f"{row['proxy']:.4f}" if row.get("proxy") is not None else "n/a"
        note = (row.get("failed") or "").replace("|", "/")
        lines.append(f"| {_name(row)} | {_setting(row)} | {'yes' if row['met'] else 'no'} | {speedup} | {ms} | "
                     f"{macs} | {proxy} | {note} |")
    if chart:
        lines += ["", f"![damage proxy against measured latency]({chart})"]
    return "\n".join(lines) + "\n"


def write_budget_chart(stats: Mapping, path: str | os.PathLike, *, title: str = "") -> Path:
    """PNG: KL damage (log scale) against measured latency, one labelled point per combination that met the
    budget; the budget's latency is a dashed line. Faster is left, less damage is down."""
    Figure, FigureCanvasAgg = figure_classes()
    figure = Figure(figsize=(7, 4.8), dpi=120)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    met = [row for row in stats["candidates"] if row["met"] and row.get("proxy") is not None]
    for row in met:
        chosen = row["dimensions"] == list(stats["chosen"])
        axes.scatter(row["ms"], max(row["proxy"], 1e-6), s=90 if chosen else 48, zorder=3,
                     marker="*" if chosen else "o")
        axes.annotate(_name(row) + (" (chosen)" if chosen else ""), (row["ms"], max(row["proxy"], 1e-6)),
                      textcoords="offset points", xytext=(6, 5), fontsize=9)
    axes.axvline(stats["budget_ms"], linestyle="--", linewidth=1, color="gray")
    axes.set_yscale("log")
    axes.set_xlabel("measured latency, ms (dashed: the budget)")
    axes.set_ylabel("one-shot KL damage vs dense (log)")
    axes.set_title(title or f"budget {stats['budget']}: every combination that met it", fontsize=10)
    axes.grid(True, alpha=0.3)
    axes.margins(x=0.25, y=0.25)
    missed = [_name(row) for row in stats["candidates"] if not row["met"]]
    if missed:
        figure.text(0.01, 0.01, f"did not meet the budget: {', '.join(missed)}", fontsize=7, va="bottom")
    figure.subplots_adjust(bottom=0.16)
    path = file_path(path)
    with replaced_whole(path) as partial:
        figure.savefig(partial, format="png")
    return path

