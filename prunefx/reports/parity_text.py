"""How a summary says a report's parity entry (runtime/onnx/parity.py's Parity.entry): its relative error, or that
nothing was compared, where every output was zero on both sides."""

from __future__ import annotations


def parity_words(entry: dict, digits: int = 2) -> str:
    if entry.get("outputs_all_zero"):
        return "nothing compared (every output is zero)"
    return f"relative error {entry['relative']:.{digits}e}"
