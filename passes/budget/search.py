"""What the budget searches share (prune_to_budget over widths, depth_to_budget over merged blocks,
choose_for_budget over their mixes): a measured candidate, its confirmation, the one acceptance rule and the
budget as text.

A search asks for its measurements (passes/budget/measurement.py's Ask) and its caller answers them.
Confirmation exists because one short measurement on a loaded machine can be off by 20 %.

The acceptance rule (`Acceptance`), the same for every search: a confirmed candidate is accepted when the
lower bound of its speed-up interval clears the budget S (`bound_clears`: on its point estimate, a candidate
at the bottom of the window is measured below S by about half of the independent checks), its point is at
least S times the floor (`floor`: CROSS_PROCESS, or the middle of a window narrower than it; a point just
above S reads below S in another process about half the time) and at most S (1 + tolerance) (`in_window`).
When no setting a search can reach clears the floor (coarse widths, whole blocks), the least changed one whose
bound clears S is accepted: a step that cannot land higher is not refused for a margin it cannot give.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from prunefx.graph import Program
from prunefx.graph.errors import PrunefxError
from prunefx.graph.timing import confidence_text
from prunefx.passes.budget.measurement import Ask, Steps, Timing, drive

# The lowest point an accepted candidate may read, in units of S: a point just above S reads below S in another
# process about half the time (docs/latency-budgets.md, 'How a candidate is accepted')
CROSS_PROCESS = 1.05
# A candidate whose figures a busy machine took (Timing.busy) may be measured longer this many times in all: once
# where its confirmation was busy, once more where a fresher reading is at odds with it (width_search.py)
MOST_LONGER_WHEN_BUSY = 2


@dataclass
class Measured:
    """A candidate's latency beside the dense model's, as the search knows it. `timing` is the measurer's Timing
    itself, unchanged from the timer to the report: the search's reading until confirmed, read as a point (a
    short reading's interval is not relied on), then the confirmation's, whose interval decides. `first` keeps
    the search's reading once confirmed; `longer`: measured longer still, and those figures replaced it (`times_longer`
    counts how often it was asked)."""

    timing: Timing
    first: Timing | None = None
    longer: bool = False
    times_longer: int = 0

    @classmethod
    def of(cls, reading) -> Measured:
        """A search's reading (a Timing, or a (dense ms, ms, spread) triple), unconfirmed."""
        return cls(Timing.of(reading))

    @property
    def dense_ms(self) -> float:
        return self.timing.dense_ms

    @property
    def ms(self) -> float:
        return self.timing.ms

    @property
    def spread(self) -> float:
        return self.timing.spread

    @property
    def low(self) -> float | None:
        """The interval's lower bound once confirmed; None before."""
        return self.timing.low if self.confirmed else None

    @property
    def high(self) -> float | None:
        return self.timing.high if self.confirmed else None

    @property
    def confidence(self) -> float | None:
        return self.timing.confidence if self.confirmed else None

    @property
    def method(self) -> str | None:
        return self.timing.method if self.confirmed else None

    @property
    def speedup(self) -> float:
        return self.timing.speedup

    @property
    def busy(self) -> bool:
        """The figures it holds were measured while other processes took much of the cores (Timing.busy)."""
        return self.timing.busy

    @property
    def confirmed(self) -> bool:
        return self.first is not None

    @property
    def lower_bound(self) -> float:
        """The speed-up a decision may rely on: the interval's lower bound once confirmed, else the point."""
        return self.low if self.low is not None else self.speedup

    def confirm(self, latency, dense: Program, candidate: Program) -> None:
        """`confirming`, measured by `latency` (a Measurer)."""
        drive(self.confirming(dense, candidate), latency)

    def confirming(self, dense: Program, candidate: Program, against: float | None = None) -> Steps:
        """Measure again, longer (once): the confirmation's figures and interval replace the first ones; and longer
        still where the confirmation was taken on a busy machine (Timing.busy), which can spoil it whole.
        `against`: the speed-up the interval is judged against (the measurer may stop once it settles it)."""
        if self.first is None:
            first = self.timing
            timing = yield Ask("confirm", dense, candidate, against)
            if timing is not None:
                self.timing = timing
            self.first = first
            if timing is not None and timing.busy:
                yield from self.confirming_longer(dense, candidate, against)

    def confirming_longer(self, dense: Program, candidate: Program, against: float | None = None) -> Steps:
        """Once confirmed, measure longer still where the measurer can (measurement.LongerMeasurer): once, or while
        its figures are busy up to MOST_LONGER_WHEN_BUSY times. The longer figures and interval replace the
        confirmed ones unless they are busier still; `first` stays the search's measurement."""
        again = self.busy and self.times_longer < MOST_LONGER_WHEN_BUSY
        if self.first is not None and (not self.longer or again):
            timing = yield Ask("confirm_longer", dense, candidate, against)
            self.times_longer += 1
            if timing is not None and not (self.longer and _busier(timing, self.timing)):
                self.timing, self.longer = timing, True

    def straddles(self, wanted: float, tolerance: float) -> bool:
        """Confirmed with the point in [S, S (1 + tolerance)] but the interval's lower bound below S (`wanted`):
        the evidence neither accepts nor rejects it."""
        return self.first is not None and self.lower_bound < wanted <= self.speedup <= wanted * (1 + tolerance)

    @classmethod
    def from_dict(cls, row: dict) -> Measured:
        """The inverse of to_dict."""
        first, interval = row.get("first"), row.get("interval")
        bounds = (interval["low"], interval["high"], interval["confidence"], interval["method"]) if interval else ()
        return cls(Timing(row["dense_ms"], row["ms"], row["spread"], *bounds, contention=row.get("contention")),
                   Timing(first["dense_ms"], first["ms"], first["spread"], contention=first.get("contention"))
                   if first else None, bool(row.get("longer")))

    def to_dict(self) -> dict:
        row: dict[str, object] = {"speedup": self.speedup, "dense_ms": self.dense_ms, "ms": self.ms, "spread": self.spread,
               "confirmed": self.confirmed}
        if self.low is not None:
            row["interval"] = {"low": self.low, "high": self.high, "confidence": self.confidence,
                               "method": self.method}
        if self.first is not None:
            row["first"] = {"speedup": self.first.speedup, "dense_ms": self.first.dense_ms, "ms": self.first.ms,
                            "spread": self.first.spread, **_contention(self.first)}
        if self.longer:
            row["longer"] = True
        return {**row, **_contention(self.timing)}


def _busier(new: Timing, old: Timing) -> bool:
    """Whether other processes took more of the cores during `new` than during `old` (never where either is unknown)."""
    return new.contention is not None and old.contention is not None and new.contention > old.contention


def _contention(timing: Timing) -> dict:
    """The share of the cores other processes took while `timing` was measured, where it is known."""
    return {} if timing.contention is None else {"contention": timing.contention}


def meets(measured: Measured, *, speedup: float | None, latency_ms: float | None) -> bool:
    """Whether `measured` meets the budget: a speed-up of at least `speedup`, or a latency of at most
    `latency_ms`. Once confirmed, on the interval's lower bound: the speed-up's, and for a latency budget the
    dense median over that bound (the candidate's latency as slow as the interval allows)."""
    if speedup is not None:
        return measured.lower_bound >= speedup
    return measured.dense_ms / measured.lower_bound <= _latency_budget(latency_ms)


def wanted_speedup(measured: Measured, *, speedup: float | None, latency_ms: float | None) -> float:
    """The budget as a speed-up over the dense model (a latency budget through the dense median measured)."""
    return speedup or measured.dense_ms / _latency_budget(latency_ms)


def _latency_budget(latency_ms: float | None) -> float:
    # The budget configs check "exactly one of speedup and latency_ms": without a speed-up, a latency is set.
    if latency_ms is None:
        raise ValueError("a budget needs a speed-up or a latency in milliseconds; neither was given")
    return latency_ms


@dataclass(frozen=True)
class Acceptance:
    """The one acceptance rule of the budget searches (see the module docstring). `tolerance` None: no window
    above S (choose_for_budget's depth share, which the width search after it tops up to the budget)."""

    speedup: float | None
    latency_ms: float | None
    tolerance: float | None = 0.15

    def wanted(self, measured: Measured) -> float:
        """The budget as a speed-up over the dense model (a latency budget through the dense median measured)."""
        return wanted_speedup(measured, speedup=self.speedup, latency_ms=self.latency_ms)

    @property
    def floor(self) -> float:
        """CROSS_PROCESS, or the middle (in log) of a window narrower than it; 1 without a window."""
        return 1.0 if self.tolerance is None else min(CROSS_PROCESS, math.sqrt(1 + self.tolerance))

    def bound_clears(self, measured: Measured) -> bool:
        return meets(measured, speedup=self.speedup, latency_ms=self.latency_ms)

    def meets(self, measured: Measured) -> bool:
        """The bound clears S and the point S times the floor."""
        return self.bound_clears(measured) and measured.speedup >= self.floor * self.wanted(measured)

    def in_window(self, measured: Measured) -> bool:
        """The point at most S (1 + tolerance), however wide the interval: a higher point leaves [0.95 S, 1.25 S]
        when measured again (docs/latency-budgets.md, 'How a candidate is accepted')."""
        return self.tolerance is None or measured.speedup <= (1 + self.tolerance) * self.wanted(measured)

    def accepts(self, measured: Measured) -> bool:
        return self.meets(measured) and self.in_window(measured)

    def confirm(self, measured: Measured, latency, dense: Program, candidate: Program) -> Measured:
        """`confirming`, measured by `latency` (a Measurer)."""
        drive(self.confirming(measured, dense, candidate), latency)
        return measured

    def confirming(self, measured: Measured, dense: Program, candidate: Program, *,
                   longer_below_floor: bool = True) -> Steps:
        """Confirm `measured` (once), and measure longer still where the budget lies inside the interval
        (Measured.straddles): the step every search takes before it relies on a reading. `longer_below_floor` False: not where the point lies below S times the
        floor, which no longer reading lets `meets` accept (a search whose last resort is such a candidate measures
        it longer then)."""
        # each measurement is judged against S: the measurer may stop once its interval settles it
        yield from measured.confirming(dense, candidate, self.wanted(measured))
        if self.wants_longer(measured, below_floor=longer_below_floor):
            yield from measured.confirming_longer(dense, candidate, self.wanted(measured))

    def wants_longer(self, measured: Measured, *, below_floor: bool = True) -> bool:
        """Confirmed with the budget inside its interval, not yet measured longer (and, unless `below_floor`, with
        its point at S times the floor or above). No window (tolerance None) holds no point but S itself: nothing
        to settle by measuring longer."""
        wanted = self.wanted(measured)  # after the confirmation: a latency budget reads its dense median
        if measured.longer or not measured.straddles(wanted, self.tolerance or 0.0):
            return False
        return below_floor or measured.speedup >= self.floor * wanted


def budget_text(speedup: float | None, latency_ms: float | None) -> str:
    """'a 2x speed-up' or '4 ms'; a speed-up to 3 decimals: a share the mix derives (sqrt 3) reads 1.732x, not 1.73205x."""
    return f"a {round(speedup, 3):g}x speed-up" if speedup else f"{latency_ms:g} ms"


def speedup_text(measured: Measured) -> str:
    """'2.10x (90 % interval 2.04-2.16)' once confirmed with an interval, else '2.10x'."""
    if measured.low is None or measured.method == "point":
        return f"{measured.speedup:.2f}x"
    return f"{measured.speedup:.2f}x ({confidence_text(measured.confidence)} interval {measured.low:.2f}-{measured.high:.2f})"


def noise_text(measured: Measured, wanted: float) -> str:
    """What to add when the best candidate's point cleared the budget but its interval did not: the timing, not
    the model, decided."""
    if measured.low is None or not measured.low < wanted <= measured.speedup:
        return ""
    return "; its interval holds the budget, so the timing was too noisy to decide: run it again with nothing else running"


class BudgetUnreachable(PrunefxError):
    """A dimension's search could not meet the budget; `best` is the fastest candidate it measured, so a caller
    trying another dimension (width, then depth) can say what each reached. `overshot`: the budget was met, but
    only by a step that lands above its tolerance (depth moves in whole blocks), which `best` then holds. `noisy`:
    `best`'s point cleared the budget and only its interval did not (noise_text)."""

    def __init__(self, message: str, *, dimension: str, best: Measured | None, overshot: bool = False,
                 noisy: bool = False):
        super().__init__(message)
        self.dimension, self.best, self.overshot, self.noisy = dimension, best, overshot, noisy


def unreachable_in(error: BaseException | None) -> BudgetUnreachable | None:
    """The BudgetUnreachable a (Pipeline) error was raised from, if any."""
    while error is not None:
        if isinstance(error, BudgetUnreachable):
            return error
        error = error.__cause__
    return None


def require_latency(pass_name: str, latency) -> None:
    """Budget passes measure through an injected Measurer; without one, say what to pass."""
    if latency is None:
        raise PrunefxError(f"{pass_name} needs 'latency': a Measurer (passes/budget/measurement.py), or a function "
                           "(dense, candidate) -> (dense ms, candidate ms, spread), e.g. "
                           "prunefx.runtime.onnx_latency_pair()")
