"""The typed facts report.json is built from (prunefx/reports/report_json.py): what every command knows
when it writes its report, one field per common key of docs/reference/report.schema.json. A command fills
what it has; what it did not do stays None and is written as null, so every report has the same keys."""

from __future__ import annotations

from dataclasses import dataclass, field

from prunefx.budget.outcome import BudgetOutcome
from prunefx.graph import Program, count

COMMANDS = ("prune", "depth", "compress", "quantize", "demo")


@dataclass(frozen=True)
class Costs:
    """MACs and parameters of the dense model and of the delivered one, from the one counter."""

    macs_before: int
    macs_after: int
    params_before: int
    params_after: int

    @classmethod
    def of(cls, before: Program, after: Program) -> Costs:
        dense, delivered = count(before), count(after)
        return cls(dense.macs, delivered.macs, dense.params, delivered.params)


@dataclass(frozen=True)
class Latency:
    """The dense model against the delivered one, timed side by side after the fact (not a budget's search:
    that is `budget`). `extra`: the command's own figures beside the common ones (interval, warm-up, p90)."""

    backend: str
    threads: int | None  # None on a backend that reads no thread count (a GPU's)
    runs: int
    dense_ms: float
    compressed_ms: float
    speedup: float
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class LatencySkipped:
    """Why the delivered model was not timed (quantize: a model captured at a batch size other than 1)."""

    reason: str


@dataclass(frozen=True)
class ReportFacts:
    """Everything the common keys of report.json are written from; `sections` holds the command's own keys
    (groups, accuracy, passes...), written beside them."""

    command: str
    model: str
    costs: Costs
    files: dict[str, str]  # every file written, as named in the output folder
    parity: dict | None = None  # torch against ONNX Runtime for model.onnx (prunefx/deliverable.py)
    calibration: str | None = None  # the calibration data read, in words
    outcome: BudgetOutcome | None = None  # how a measured budget was met (prunefx.meet_budget)
    budget: dict | None = None  # a budget met inside a recipe (compress: choose_for_budget), without an outcome
    latency: Latency | LatencySkipped | None = None
    sections: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.command not in COMMANDS:
            raise ValueError(f"report.json: unknown command {self.command!r}; one of {', '.join(COMMANDS)}")
