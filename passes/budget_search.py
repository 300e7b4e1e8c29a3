"""What the budget searches share (prune_to_budget over widths, depth_to_budget over merged blocks): a
measured candidate, its confirmation, and the budget as text.

A measuring function is `latency(dense, candidate) -> (dense ms, candidate ms, spread)`, injected by the
caller (runtime/speedup.py's onnx_latency_pair; passes never import the runtime). It may carry a
`confirm` attribute, the same measurement made longer; without one, `latency` itself measures again.
Confirmation exists because one short measurement on a loaded machine can be off by 20 % (RegNetY-800MF:
a search measured 2.05x, a separate process 1.66x; benchmarks/results/latency_budget.md).
"""

from __future__ import annotations

from dataclasses import dataclass

from prunefx.graph import Program
from prunefx.graph.errors import PrunefxError


@dataclass
class Measured:
    """A candidate's latency beside the dense model's; `first` keeps the search's measurement once a
    confirmation replaced it."""

    dense_ms: float
    ms: float
    spread: float
    first: tuple[float, float, float] | None = None

    @property
    def speedup(self) -> float:
        return self.dense_ms / self.ms

    @property
    def confirmed(self) -> bool:
        return self.first is not None

    def confirm(self, latency, dense: Program, candidate: Program) -> None:
        """Measure again, longer (once); the new figures replace the first ones."""
        if self.first is None:
            again = getattr(latency, "confirm", latency)
            first = (self.dense_ms, self.ms, self.spread)
            self.dense_ms, self.ms, self.spread = again(dense, candidate)
            self.first = first

    @classmethod
    def from_dict(cls, row: dict) -> Measured:
        """The inverse of to_dict: a pass's statistics hand the chosen candidate's figures on this way."""
        first = row.get("first")
        return cls(row["dense_ms"], row["ms"], row["spread"],
                   (first["dense_ms"], first["ms"], first["spread"]) if first else None)

    def to_dict(self) -> dict:
        row = {"speedup": self.speedup, "dense_ms": self.dense_ms, "ms": self.ms, "spread": self.spread,
               "confirmed": self.confirmed}
        if self.first is not None:
            row["first"] = {"speedup": self.first[0] / self.first[1], "dense_ms": self.first[0], "ms": self.first[1],
                            "spread": self.first[2]}
        return row


def meets(measured: Measured, *, speedup: float | None, latency_ms: float | None) -> bool:
    """Whether `measured` meets the budget: a speed-up at least `speedup`, or a latency at most `latency_ms`."""
    if speedup is not None:
        return measured.speedup >= speedup
    return measured.ms <= latency_ms


def budget_text(speedup: float | None, latency_ms: float | None) -> str:
    return f"a {speedup:g}x speed-up" if speedup else f"{latency_ms:g} ms"


def require_latency(pass_name: str, latency) -> None:
    """Budget passes measure through an injected function; without one, say what to pass."""
    if latency is None:
        raise PrunefxError(f"{pass_name} needs 'latency': a function (dense, candidate) -> (dense ms, "
                           "candidate ms, spread), e.g. prunefx.runtime.onnx_latency_pair()")
