"""Deployment report: every measured variant of a model (dense, compressed, each precision or backend) with
its accuracy and its measured latency, as a Markdown table, JSON, and a PNG chart of accuracy against latency.

A `Variant` is one model on one backend. Latencies in one chart should come from one machine and one run;
the chart names its backends, so mixed charts at least say so. `prunefx compress` ends with one (report.json, report.md,
accuracy_latency.png); `write_deployment_report` draws one for any list of variants. matplotlib's object API
on the Agg canvas (no pyplot, no display) makes it work headless, on CI and Jetson boards alike.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from prunefx.graph.counted import counted
from prunefx.graph.errors import first_line, printable
from prunefx.graph.whole_files import file_path, replaced_together, replaced_whole
from prunefx.runtime.errors import BackendUnavailableError, MeasurementError

CHART_FILE = "accuracy_latency.png"


@dataclass(frozen=True)
class Variant:
    name: str
    accuracy: float | None          # fraction in [0, 1] on `accuracy_split`; None when not evaluated
    latency_ms: float               # median
    backend: str
    p90_ms: float | None = None
    p99_ms: float | None = None
    macs: int | None = None
    params: int | None = None
    accuracy_split: str = "test"
    notes: str = ""

    def __post_init__(self):
        if not (_number(self.latency_ms) and math.isfinite(self.latency_ms) and self.latency_ms > 0):
            raise MeasurementError(f"variant {self.name!r}: latency must be a positive number of ms, "
                                   f"got {self.latency_ms!r}")
        if self.accuracy is not None and not (_number(self.accuracy) and 0 <= self.accuracy <= 1):
            raise MeasurementError(f"variant {self.name!r}: accuracy is a fraction in [0, 1], got {self.accuracy!r}")

    def to_dict(self) -> dict:
        # trtexec before 8.6 prints no p90: NaN becomes null, so the JSON stays strict
        return {key: None if isinstance(value, float) and not math.isfinite(value) else value
                for key, value in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Mapping) -> Variant:
        known = {field.name for field in fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in known})


def _number(value) -> bool:
    """An int or float, not a bool (True would read as 1 ms) nor text."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# ---- from a compress report ---------------------------------------------------------------------

def _accuracy(results: Mapping) -> tuple[float | None, str]:
    for split in ("test", "val"):
        if results.get(split):
            return float(results[split]["accuracy"]), split
    return None, "test"


def variants_from_compress(report: Mapping) -> list[Variant]:
    """The dense and the compressed model of a `prunefx compress` report, as measured there."""
    latency = report["latency"]
    setting = [latency.get("precision"), f"batch {latency['batch_size']}",
               counted(latency["threads"], "thread") if latency.get("threads") else None]
    backend = f"{latency['backend']} ({', '.join(part for part in setting if part)})"
    variants = []
    for name, when, which in (("dense", "before", "dense"), ("compressed", "after", "compressed")):
        accuracy, split = _accuracy(report["accuracy"][when])
        stats = latency[which]
        variants.append(Variant(name=name, accuracy=accuracy, latency_ms=stats["median_ms"], backend=backend,
                                p90_ms=stats.get("p90_ms"), p99_ms=stats.get("p99_ms"),
                                macs=report[f"macs_{when}"], params=report[f"params_{when}"], accuracy_split=split))
    return variants


# ---- chart --------------------------------------------------------------------------------------

def figure_classes():
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as error:
        raise BackendUnavailableError("the accuracy/latency chart needs matplotlib: `pip install 'matplotlib>=3.7'`") \
            from error
    return Figure, FigureCanvasAgg


def write_chart(variants: Sequence[Variant], path: str | os.PathLike, *, title: str = "") -> Path:
    """PNG scatter of accuracy (%) against median latency (ms), one labelled point per variant; variants
    without an accuracy are listed under the plot instead. Faster is left, better is up."""
    path = file_path(path)
    with replaced_whole(path) as partial:
        _chart(variants, title).savefig(partial, format="png")
    return path


def _chart(variants: Sequence[Variant], title: str):
    Figure, FigureCanvasAgg = figure_classes()
    figure = Figure(figsize=(7, 4.8), dpi=120)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    plotted = [v for v in variants if v.accuracy is not None]
    for variant in plotted:
        points = axes.scatter(variant.latency_ms, 100 * variant.accuracy, s=48, zorder=3)
        axes.annotate(variant.name, (variant.latency_ms, 100 * variant.accuracy), textcoords="offset points",
                      xytext=(6, 5), fontsize=9)
        if variant.p90_ms is not None and variant.p90_ms >= variant.latency_ms:  # NaN compares False: no line
            axes.plot([variant.latency_ms, variant.p90_ms], [100 * variant.accuracy] * 2, linewidth=1, alpha=0.5,
                      color=points.get_facecolor()[0])
    axes.set_xlabel("median latency, ms (line: to p90)")
    axes.set_ylabel(f"accuracy, % ({', '.join(sorted({v.accuracy_split for v in plotted})) or 'n/a'})")
    axes.set_title(title or "accuracy vs measured latency", fontsize=10)
    axes.grid(True, alpha=0.3)
    axes.margins(x=0.25, y=0.25)
    backends = sorted({v.backend for v in variants})
    footer = "latency: " + "; ".join(backends)
    missing = [v.name for v in variants if v.accuracy is None]
    if missing:
        footer += f"\nnot evaluated (no accuracy): {', '.join(missing)}"
    figure.text(0.01, 0.01, footer, fontsize=7, va="bottom")
    figure.subplots_adjust(bottom=0.2 if missing else 0.16)
    return figure


# ---- Markdown and JSON --------------------------------------------------------------------------

def _cell(value, fmt: str) -> str:
    return "n/a" if value is None or (isinstance(value, float) and not math.isfinite(value)) else format(value, fmt)


def variants_table(variants: Sequence[Variant]) -> list[str]:
    """Markdown table lines: one row per variant, the speed-up relative to the first one."""
    reference = variants[0].latency_ms if variants else None
    lines = ["| variant | backend | accuracy | median ms | p90 ms | p99 ms | speed-up | MACs | params |",
             "|---|---|---|---|---|---|---|---|---|"]
    for v in variants:
        accuracy = "n/a" if v.accuracy is None else f"{100 * v.accuracy:.2f} % ({v.accuracy_split})"
        macs = _cell(None if v.macs is None else v.macs / 1e6, ".2f") + (" M" if v.macs is not None else "")
        params = _cell(None if v.params is None else v.params / 1e6, ".3f") + (" M" if v.params is not None else "")
        lines.append(f"| {v.name} | {v.backend} | {accuracy} | {v.latency_ms:.3f} | {_cell(v.p90_ms, '.3f')} | "
                     f"{_cell(v.p99_ms, '.3f')} | {reference / v.latency_ms:.2f}x | {macs} | {params} |")
    return lines


def deployment_markdown(variants: Sequence[Variant], chart: str | None = CHART_FILE) -> str:
    """The '## Deployment' section: the variants table and the chart."""
    lines = ["## Deployment", "", f"Every measured variant; speed-up relative to `{variants[0].name}`, "
             "ratio of medians." if variants else "No variant was measured.", "", *variants_table(variants)]
    if chart:
        lines += ["", f"![accuracy against measured latency]({chart})"]
    return "\n".join(lines) + "\n"


def read_variants(data: Mapping | str | os.PathLike) -> list[Variant]:
    """Variants from a report: a JSON file, its text, or the parsed dict (its "variants" list)."""
    if isinstance(data, os.PathLike) or (isinstance(data, str) and not data.lstrip().startswith("{")):
        path = Path(data)  # a path: a missing one is said as such, not parsed as JSON text
        if not path.is_file():
            raise MeasurementError(f"no report file {printable(str(path))}")
        data = path.read_text()
    try:
        parsed = json.loads(data) if isinstance(data, str) else data
        return [Variant.from_dict(item) for item in parsed["variants"]]
    except (ValueError, KeyError, TypeError) as error:
        raise MeasurementError(f"not a deployment report (a JSON object with a 'variants' list): "
                               f"{first_line(error)}") from error


def write_deployment_report(variants: Iterable[Variant], output: str | os.PathLike, *, title: str = "Deployment report",
                            extra: Mapping | None = None) -> dict[str, Path]:
    """OUTPUT/report.md, report.json and accuracy_latency.png for `variants`; returns the three paths."""
    variants = list(variants)
    if not variants:
        raise MeasurementError("a deployment report needs at least one measured variant")
    output = Path(output)
    paths = {"markdown": output / "report.md", "json": output / "report.json", "chart": output / CHART_FILE}
    payload = {"title": title, **(dict(extra) if extra else {}), "variants": [v.to_dict() for v in variants]}
    try:  # made before any file is touched: `extra` may hold what JSON cannot
        report = json.dumps(payload, indent=2, allow_nan=False) + "\n"
    except (TypeError, ValueError) as error:
        raise MeasurementError(f"cannot write a deployment report: its fields must be finite numbers, text, lists "
                               f"or mappings ({error})") from None
    texts = {"json": report, "markdown": f"# {title}\n\n" + deployment_markdown(variants, CHART_FILE)}
    chart = _chart(variants, title)
    with replaced_together(list(paths.values())) as written:  # all three, or the previous ones
        partials = dict(zip(paths, written))
        for kind, text in texts.items():
            partials[kind].write_text(text)
        chart.savefig(partials["chart"], format="png")
    return paths
