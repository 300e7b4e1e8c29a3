"""What `meet_budget` hands back beside the chosen Program: the route that met the budget, the accepted
measurement, every candidate measured, the refusals on the way and where it was all measured.

One outcome, one report: report.json's `budget` and `route` entries are written from it (`budget_entry`,
`route_entry`) by prunefx/reports/report_json.py, once, whichever route met the budget.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prunefx.passes.budget.search import BudgetUnreachable, Measured
from prunefx.passes.core.pipeline import PipelineResult

ROUTES = ("width", "depth", "width+depth")


@dataclass(frozen=True)
class RouteRefusal:
    """A route that could not meet the budget: its one-line reason and the fastest candidate it measured
    (`overshot`: depth met the budget only by a whole-block step above its window, which `best` holds)."""

    route: str
    message: str
    best: Measured | None
    overshot: bool = False
    noisy: bool = False  # `best`'s point met the budget and only its interval did not (BudgetUnreachable.noisy)

    @classmethod
    def of(cls, route: str, error: BudgetUnreachable) -> RouteRefusal:
        return cls(route, str(error), error.best, error.overshot, error.noisy)

    def to_dict(self) -> dict:
        return {"refusal": self.message, **(self.best.to_dict() if self.best else {})}


@dataclass(frozen=True)
class MeasuredOn:
    """Where and how every measurement of the budget was made."""

    backend: str
    precision: str
    batch: int = 1
    runs: int | None = None     # timed runs of each model per measurement (a confirmation takes more)
    threads: int | None = None  # where the backend reads them (ONNX Runtime, eager torch)
    compile: bool = False
    # ONNX Runtime's session options and confirmation processes, where not its defaults
    session: dict = field(default_factory=dict)
    facts: dict = field(default_factory=dict)  # the measurer's own account (the cuda backend's timing, memory)

    @classmethod
    def of(cls, measurement) -> MeasuredOn:
        """From a runtime.measure.pairs.Measurement: its backend and the settings that backend reads."""
        from prunefx.runtime import backends

        settings, reads = measurement.settings, backends.get(measurement.backend).options
        threads = settings.threads if "threads" in reads else None
        session = {name: value for name, value in settings.set_apart("spinning", "flush_denormals", "rounds").items()
                   if name in reads}
        return cls(measurement.backend, settings.precision, settings.batch, settings.runs, threads, settings.compile,
                   session)

    def to_dict(self) -> dict:
        return {"backend": self.backend, "precision": self.precision, "batch": self.batch,
                **({"runs": self.runs} if self.runs is not None else {}),
                **({"threads": self.threads} if self.threads is not None else {}),
                **({"compile": True} if self.compile else {}), **self.session,
                **({"measurement": self.facts} if self.facts else {})}


@dataclass
class BudgetOutcome:
    """How `meet_budget` met its budget. `search` is the route's own statistics (its search's report, as
    the budget pass wrote it); `result` the Pipeline that produced the Program, for each step's facts."""

    route: str
    speedup: float | None
    latency_ms: float | None
    measured: Measured
    candidates: list[dict]
    measured_on: MeasuredOn
    search: dict
    result: PipelineResult = field(repr=False)
    refusals: list[RouteRefusal] = field(default_factory=list)
    depth_share: float | None = None

    @property
    def budget(self) -> str:
        return self.search["budget"]

    def refusal(self, route: str) -> RouteRefusal | None:
        return next((refusal for refusal in self.refusals if refusal.route == route), None)

    def budget_entry(self) -> dict:
        """report.json's `budget`: the route's search report and where it was measured."""
        return {**self.search, **self.measured_on.to_dict()}

    def route_entry(self) -> dict:
        """report.json's `route`: the route taken and the refusals that led there (none for width alone)."""
        return {"taken": self.route, **{refusal.route: refusal.to_dict() for refusal in self.refusals}}
