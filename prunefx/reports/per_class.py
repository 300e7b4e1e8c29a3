"""The per-class scores of a dense task (IoU per class for segmentation, mAP@[.5:.95] per class for
detection; prunefx/dense_tasks.py) as a Markdown table of the compress report: dense against compressed on
the split the report's headline uses (test, else val), so a class that pruning hurt more than the mean
shows."""

from __future__ import annotations

_KEYS = ("per_class_iou", "per_class_map")


def _values(result: dict | None) -> list | None:
    if not result:
        return None
    return next((result[key] for key in _KEYS if key in result), None)


def _cell(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}"


def per_class_markdown(report: dict) -> str:
    """The section, or "" when the report has no per-class scores (classification)."""
    accuracy, names = report.get("accuracy", {}), report.get("classes") or []
    split = "test" if accuracy.get("before", {}).get("test") else "val"
    before, after = (_values(accuracy.get(when, {}).get(split)) for when in ("before", "after"))
    if before is None or after is None:
        return ""
    metric = accuracy["before"][split].get("metric", "")
    rows = [f"| {names[i] if i < len(names) else i} | {_cell(b)} | {_cell(a)} |"
            for i, (b, a) in enumerate(zip(before, after))]
    return "\n".join([f"## {metric} per class ({split}, %)", "",
                      "| class | dense | compressed |", "|---|---|---|", *rows,
                      "", "n/a: the class is in neither the labels nor the predictions.", ""])
