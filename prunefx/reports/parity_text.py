"""How a summary says a report's parity entry (runtime/onnx/parity.py's Parity.entry): its relative error, or that
nothing was compared, where the model's outputs barely change with its input."""

from __future__ import annotations

CONSTANT = "nothing compared (the outputs barely change with the input)"


def parity_words(entry: dict, digits: int = 2) -> str:
    if entry.get("outputs_constant"):
        return CONSTANT
    return f"relative error {entry['relative']:.{digits}e}"
