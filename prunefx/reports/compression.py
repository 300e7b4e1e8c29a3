"""The report of the compress flow (prunefx/compression.py): report.json made JSON-safe, the console
summary and report.md. Both tables come from one list of rows, so the console and the file never differ.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch

from prunefx.graph import Program
from prunefx.graph.counted import counted
from prunefx.reports.budget import budget_markdown, budget_stats
from prunefx.reports.budget_text import busy_text
from prunefx.reports.parity_text import parity_words
from prunefx.reports.per_class import per_class_markdown
from prunefx.reports.stage import stages_markdown
from prunefx.runtime import backends
from prunefx.runtime.measure.deployment_report import CHART_FILE, Variant, deployment_markdown


def pass_summary(stats: Mapping) -> str:
    """One line per pass for the console: what it did, from the statistics it returned."""
    parts = []
    if "macs_before" in stats and "macs_after" in stats:
        parts.append(f"MACs {stats['macs_after'] / max(stats['macs_before'], 1):.3f} of its input")
    if "events" in stats:
        parts.append(f"{len(stats['events'])} pruning events")
    training = stats.get("training", stats)
    if "steps_run" in training:
        resumed = training.get("resumed_from")  # a resumed run trained from a checkpoint's step on
        steps = (f"{training['steps']} training steps ({training['steps_run']} in this run, resumed at step {resumed})"
                 if resumed else f"{training['steps_run']} training steps")
        parts.append(f"{steps}, loss {training['train_loss']:.4f} "
                     f"(task {training['task_loss']:.4f}, KD {training['kd_loss']:.4f})")
        if training.get("eval"):  # the trainer's top-1 (per pixel for a segmenter), not the report's metric
            parts.append(f"val top-1 {100 * training['eval'][-1]['accuracy']:.2f} %")
        parts.append(f"{training['seconds']:.0f} s")
    if "folded" in stats:
        parts.append(f"folded {stats['folded']}")
    if "pattern" in stats and "zero_fraction" in stats:  # sparsify_nm
        parts.append(f"{stats['pattern']} ({stats['criterion']}) on {len(stats['weights'])} layers, "
                     f"{100 * stats['zero_fraction']:.1f} % of their weights zero")
    return ", ".join(parts) or "done"


def json_safe(value):
    """Statistics as plain JSON: tensors and arrays as lists (large ones as their shape), NaN and
    infinities as null, paths and anything else unknown as text."""
    if isinstance(value, Mapping):
        return {str(key): json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [json_safe(item) for item in value]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, (np.generic,)):
        return json_safe(value.item())
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (torch.Tensor, np.ndarray)):
        array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else value
        return json_safe(array.tolist()) if array.size <= 64 else f"array of shape {list(array.shape)}"
    if isinstance(value, Program):
        return f"Program {value.name}"
    if callable(value):
        return getattr(value, "__name__", type(value).__name__)
    return str(value)


def _threads(count: int) -> str:
    return counted(count, "thread")


def measured_on(latency: Mapping) -> str:
    """'ONNX Runtime, batch 1, 2 threads' or 'PyTorch on CUDA fp16, batch 32': where report.json's `latency` was
    timed (the stages too: they are timed where it is)."""
    name = "ort" if latency["backend"] == "onnxruntime" else latency["backend"]
    precision = f" {latency['precision']}" if latency.get("precision") else ""
    threads = f", {_threads(latency['threads'])}" if latency.get("threads") else ""
    return f"{backends.label(name)}{precision}, batch {latency['batch_size']}{threads}"


def _ratio(after: float, before: float) -> str:
    return f"{after / before:.3f}x" if before else "n/a"


def _accuracy_cell(result: dict | None) -> str:
    return "n/a" if result is None else f"{100 * result['accuracy']:.2f} %"


def _accuracy_change(before: dict | None, after: dict | None) -> str:
    if before is None or after is None:
        return ""
    return f"{100 * (after['accuracy'] - before['accuracy']):+.2f} pt"


def _metric_name(accuracy: dict) -> str:
    """What the headline score is: top-1 accuracy, or the dense task's metric (mIoU, mAP@0.5:0.95)."""
    scored = [result for result in (*accuracy["before"].values(), *accuracy["after"].values()) if result]
    return next((result["metric"] for result in scored if result.get("metric")), "accuracy")


def summary_rows(report: dict) -> list[tuple[str, str, str, str]]:
    """(what, dense, compressed, change) rows: the same table on the console and in report.md."""
    accuracy, latency = report["accuracy"], report["latency"]
    metric = _metric_name(accuracy)
    rows = [(f"{split} {metric}", _accuracy_cell(accuracy["before"][split]), _accuracy_cell(accuracy["after"][split]),
             _accuracy_change(accuracy["before"][split], accuracy["after"][split]))
            for split in ("test", "val") if accuracy["before"][split] is not None]
    rows += [
        ("MACs per image", f"{report['macs_before'] / 1e6:.2f} M", f"{report['macs_after'] / 1e6:.2f} M",
         _ratio(report["macs_after"], report["macs_before"])),
        ("parameters", f"{report['params_before'] / 1e6:.3f} M", f"{report['params_after'] / 1e6:.3f} M",
         _ratio(report["params_after"], report["params_before"])),
        (f"latency ({measured_on(latency)}, median)", f"{latency['dense_ms']:.3f} ms",
         f"{latency['compressed_ms']:.3f} ms", _faster(latency["speedup"])),
    ]
    return rows


def _how_measured(latency: dict) -> str:
    """'measured alternately in 4 fresh processes', or the backend's own account where it did not alternate
    (trtexec times one model after the other)."""
    note = (latency.get("measurement") or {}).get("note")
    return f"({note})" if note else f"measured alternately {_where_measured(latency)}"


def _faster(speedup: float) -> str:
    return f"{speedup:.2f}x faster" if speedup >= 1 else f"{1 / speedup:.2f}x slower"


def _where_measured(latency: dict) -> str:
    """'in 4 fresh processes' (report.json's rounds: a pair of sessions in each), or 'in one process'."""
    rounds = latency.get("rounds") or 1
    return f"in {rounds} fresh processes" if rounds > 1 else "in one process"


def _parity_markdown(parity: dict) -> str:
    if parity.get("outputs_constant"):
        return parity_words(parity)
    return f"max abs error {parity['max_abs_error']:.2e} (relative {parity['relative']:.2e})"


def console_summary(report: dict) -> str:
    rows = [("", "dense", "compressed", ""), *summary_rows(report)]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(width) if i == 0 else cell.rjust(width)
                       for i, (cell, width) in enumerate(zip(row, widths))).rstrip() for row in rows]
    lines.append(f"speed-up {_how_measured(report['latency'])}, {report['latency']['runs']} "
                 f"runs each; parity torch vs ONNX Runtime: {parity_words(report['parity'], digits=1)}")
    busy = busy_text(report["latency"], "")
    if busy:
        lines.append(f"note: {busy} while the speed-up was measured: it may be off; run `prunefx bench` on the two "
                     f"files with nothing else running")
    return "\n".join(lines)


def markdown_report(report: dict) -> str:
    lines = [f"# {report['model']} compressed with recipe {report['recipe']['name']}", "",
             f"Data: {report['data']} (batch {report['batch_size']}, images {'x'.join(map(str, report['input_shape']))}"
             + (f", seed {report['data_seed']}" if report.get("data_seed") is not None else "") + ")"
             + (f", evaluated on the first {report['eval_batches']} batches of each split" if report["eval_batches"]
                else "") + "." + (f" Scored against {report['labels']}." if report.get("labels") else "")
             + (" Calibrated on the test images: the test score is not held out."
                if report.get("calibrated_on") == "test" else ""), "",
             "| | dense | compressed | change |", "|---|---|---|---|"]
    lines += [f"| {what} | {dense} | {compressed} | {change} |" for what, dense, compressed, change in summary_rows(report)]
    latency = report["latency"]
    warmup = f"{latency['warmup']} warm-up and " if latency.get("warmup") is not None else ""
    lines += ["", f"Latency: {measured_on(latency)}, {warmup}"
                  f"{latency['runs']} timed runs per model, {_how_measured(latency)}; speed-up = ratio of "
                  f"medians. Parity of model.onnx against torch: {_parity_markdown(report['parity'])}.", "", "## Passes", ""]
    for number, step in enumerate(report["passes"], 1):
        given = f" (given {', '.join(step['injected'])} by prunefx compress)" if step["injected"] else ""
        lines.append(f"{number}. `{step['pass']}`{given}: {pass_summary(step['stats'])}")
    seconds = report["seconds"]
    lines += ["", "## Files", "",
              "- `model.pt2`: the compressed program at batch 1 (deploy, `prunefx bench`, `prunefx export`)",
              f"- `model_train.pt2`: the compressed program at batch {report['batch_size']} (resume fine-tuning: "
              "`prunefx compress model_train.pt2 --recipe finetune ...`)",
              "- `model.onnx`: the compressed model at batch 1, cleaned and checked",
              "- `report.json`: everything here, and every pass's statistics", "",
              f"Took {seconds['total']:.0f} s ({seconds['pipeline']:.0f} s in the recipe's passes).", ""]
    per_class = per_class_markdown(report)
    if per_class:
        lines.append(per_class)
    if report.get("stages"):
        lines.append(stages_markdown(report["stages"], report["accuracy"]["before"]["test"],
                                     report["macs_before"], measured_on(report["latency"])))
    budget = budget_stats(report)
    if budget is not None:
        lines.append(budget_markdown(budget))
    if report.get("variants"):
        lines.append(deployment_markdown([Variant.from_dict(item) for item in report["variants"]], CHART_FILE))
    return "\n".join(lines)

