"""The search behind prune_to_budget (passes/prune_to_budget.py, whose docstring describes it): candidates cut
from the dense model at one kept fraction after another, each measured beside the dense model, aimed along the
speed-up curve their readings draw (passes/budget/speedup_curve.py), bracketed, and accepted by the rule every
budget search shares (passes/budget/search.py)."""

from __future__ import annotations

import dataclasses
import math
import statistics
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prunefx.graph import Program
from prunefx.graph.channels.timed_layers import timed_layers
from prunefx.graph.counted import counted
from prunefx.passes.budget.measurement import Ask, Steps, wanted_speedup
from prunefx.passes.budget.search import (
    Acceptance,
    BudgetUnreachable,
    Measured,
    budget_text,
    noise_text,
    speedup_text,
)
from prunefx.passes.budget.speedup_curve import DENSE, at_odds, bracket_ends, held, log_fraction_at
from prunefx.passes.core.pipeline import run_inner
from prunefx.passes.core.result import Result
from prunefx.passes.removal.channels_removed import ChannelsRemoved
from prunefx.passes.remove_channels import RemoveChannelsConfig, remove_channels

if TYPE_CHECKING:
    from prunefx.passes.prune_to_budget import PruneToBudgetConfig

SMALLEST_FRACTION = 0.02  # no search goes below 2 % of the MACs: past that, the budget is out of reach
BRACKET_MARGIN = 0.1  # inside a bracket, the next fraction stays this share of its width (in log) from either end
CLEARLY_FAST = 1.2  # a first reading this far above the window is not confirmed (a confirmation: 4x a reading)


@dataclass
class WidthCandidate:
    fraction: float
    result: Result
    measured: Measured
    target: str = "macs"
    same_as: int | None = None  # the earlier candidate with the same widths, whose measurement it shares
    table_speedup: float | None = None  # what the latency table predicts (its timed layers' sum, dense / this)

    @property
    def speedup(self) -> float:
        return self.measured.speedup

    @property
    def macs_fraction(self) -> float:
        """The MACs fraction asked, or kept where the search steered a latency table's time."""
        return self.fraction if self.target == "macs" else self.result.facts_as(ChannelsRemoved).macs_kept

    def to_dict(self) -> dict:
        asked = "macs_fraction_asked" if self.target == "macs" else "layer_time_asked"
        same = {} if self.same_as is None else {"same_widths_as": self.same_as}
        table = {} if self.table_speedup is None else {"table_speedup": self.table_speedup}
        return {asked: self.fraction, "macs_kept": self.result.facts_as(ChannelsRemoved).macs_kept,
                **same, **table, **self.measured.to_dict()}


class WidthSearch:
    """The bracketing search over the kept MACs fraction (see the module docstring)."""

    def __init__(self, dense: Program, settings: PruneToBudgetConfig, removal: RemoveChannelsConfig):
        self.dense, self.settings, self.removal = dense, settings, removal
        self.rule = Acceptance(settings.speedup, settings.latency_ms, settings.tolerance)
        self.trace: list[WidthCandidate] = []
        # with a per-layer latency table the search steers the table's time, so each step cuts where time goes
        self.target = "layer_time" if removal.latency_table is not None else "macs"
        self.table_dense_ms = self._table_ms(dense) if removal.latency_table is not None else None

    def meets(self, candidate: WidthCandidate) -> bool:
        """Met by the shared rule: the confirmed lower bound clears S and the point S times the floor."""
        return self.rule.meets(candidate.measured)

    def _bound_clears(self, candidate: WidthCandidate) -> bool:
        return self.rule.bound_clears(candidate.measured)

    def near_miss(self, candidate: WidthCandidate) -> bool:
        """Missed, but by less than the tolerance: on sub-millisecond models one short measurement is often
        that far off, and believing it would prune further than the budget needs (accuracy lost for nothing)."""
        return candidate.speedup * (1 + self.settings.tolerance) >= self._wanted_speedup(candidate)

    def close_enough(self, candidate: WidthCandidate) -> bool:
        """Accepted by the shared rule (met, and inside the window); else the search goes on."""
        return self.rule.accepts(candidate.measured)

    def measuring(self, fraction: float) -> Steps:
        """The candidate at `fraction`, cut from the dense model and measured (asked for) unless its widths were."""
        target = self.target
        result = run_inner(remove_channels, self.dense, dataclasses.replace(self.removal, **{target: fraction}),
                           on_copy=True)  # every candidate is cut from the dense Program, which stays as it is
        # Fractions between two width steps give the same model: it is not measured again, its measurement is
        # shared, and the search moves on.
        same = self._same_widths(result.program)
        if same is None:
            timing = yield Ask("search", self.dense, result.program)
            candidate = WidthCandidate(fraction, result, Measured.of(timing), target)
        else:
            candidate = WidthCandidate(fraction, result, self.trace[same].measured, target, same_as=same)
        if self.table_dense_ms is not None:
            candidate.table_speedup = self.table_dense_ms / self._table_ms(result.program)
        self.trace.append(candidate)
        return candidate

    def _table_ms(self, program: Program) -> float:
        """The latency table's time of `program`'s timed layers at the widths it has."""
        table = self.removal.latency_table
        return sum(table(layer, layer.in_channels, layer.out_channels) for layer in timed_layers(program.module))

    def table_error(self) -> float | None:
        """The median of |table's speed-up / measured speed-up - 1| over the candidates measured (not shared): how
        far the per-layer table, which steers the search, is from whole-model measurements."""
        errors = [abs(c.table_speedup / c.speedup - 1) for c in self.trace
                  if c.table_speedup is not None and c.same_as is None and c.speedup > 0]
        return statistics.median(errors) if errors else None

    def _same_widths(self, program: Program) -> int | None:
        """The index of the first candidate whose every parameter and buffer has the shapes of `program`'s."""
        shapes = _shapes(program)
        return next((index for index, c in enumerate(self.trace)
                     if c.same_as is None and _shapes(c.result.program) == shapes), None)

    def confirming(self, candidate: WidthCandidate) -> Steps:
        """Confirmed; measured longer still where the budget lies inside the interval (Measured.straddles) and
        its point could be accepted: one below S times the floor is measured longer only if the search ends
        without a candidate that clears the floor (_met_below_floor)."""
        if self.settings.confirm:
            yield from self.rule.confirming(candidate.measured, self.dense, candidate.result.program,
                                            longer_below_floor=False)
        return candidate

    def steps(self) -> Steps:
        """The search, asking for each measurement (passes/budget/measurement.py); returns the chosen WidthCandidate."""
        # first guess: latency as if proportional to MACs, aimed mid-window (a latency budget as the speed-up it asks)
        wanted = yield from wanted_speedup(self.settings.speedup, self.settings.latency_ms, self.dense)
        start = self.settings.start_speedup or 1.0
        fraction = min(start / (wanted * (1 + self.settings.tolerance / 2)), 1.0) if wanted > 1 else 0.5
        for _ in range(self.settings.max_candidates):
            candidate = yield from self.measuring(fraction)
            if self.disagreeing(candidate) or candidate.measured.busy or \
                    ((self.meets(candidate) or self.near_miss(candidate)) and not self.clearly_fast(candidate)):
                # what could be returned, what a noisy first measurement put below, and what a busy machine read
                yield from self.confirming(candidate)
            for other in self.disagreeing(candidate):  # confirmed, it still disagrees: the other reading is the suspect
                yield from self.measuring_again(other)
            if self.close_enough(candidate):
                return candidate
            good, bad = self._bracket()
            if good is None and self._at_the_floor(candidate):
                break  # every smaller fraction cuts this same model: nothing below it to try
            following = self._next(good, bad)
            if following is None:
                break
            fraction = following
        good = (yield from self._confirmed_good()) or (yield from self._met_below_floor())
        if good is None:
            best = max(self.trace, key=lambda c: c.measured.lower_bound)
            raise BudgetUnreachable(self._unreachable(best), dimension="width", best=best.measured,
                                    noisy=bool(noise_text(best.measured, self._wanted_speedup(best))))
        return good

    def _at_the_floor(self, candidate: WidthCandidate) -> bool:
        """Missed, with every group at its smallest allowed width: a smaller fraction cuts this same model, which
        the search cut again and again until its candidates ran out."""
        return not self.meets(candidate) and candidate.result.facts_as(ChannelsRemoved).target["at_floor"]

    def disagreeing(self, candidate: WidthCandidate) -> list[WidthCandidate]:
        """The earlier candidates whose readings cannot stand beside `candidate`'s (speedup_curve.at_odds): one of the two is noise
        (docs/algorithms.md, 'prune_to_budget'), so the search confirms `candidate` where it disagrees with any, even
        far above the window (a SqueezeNet reading of 3.85x at 0.66 of the MACs beside 1.78x at 0.62, 1.46x once
        confirmed, sent the search to 0.85), then measures again each one it still disagrees with."""
        return [other for other in self.trace if other is not candidate and other.same_as is None
                and at_odds(other, candidate)]

    def measuring_again(self, candidate: WidthCandidate) -> Steps:
        """A reading at odds with a fresher one measured again: confirmed if it was not, else measured longer (once,
        or again where its figures are busy: Measured.confirming_longer): a confirmation taken while the machine was
        busy can bar the window for good."""
        if not self.settings.confirm:
            return
        if not candidate.measured.confirmed:
            yield from self.confirming(candidate)
        else:
            yield from candidate.measured.confirming_longer(self.dense, candidate.result.program,
                                                            self._wanted_speedup(candidate))

    def clearly_fast(self, candidate: WidthCandidate) -> bool:
        """Unconfirmed, read far above the window (CLEARLY_FAST): confirming it would only say so again."""
        top = self._wanted_speedup(candidate) * (1 + self.settings.tolerance) * CLEARLY_FAST
        return not candidate.measured.confirmed and candidate.speedup > top

    def _confirmed_good(self) -> Steps:
        """The least pruned candidate that met, confirmed now if it was not (if it then misses: the next one)."""
        while True:
            good, _ = self._bracket()
            if good is None or good.measured.confirmed or not self.settings.confirm:
                return good
            yield from self.confirming(good)

    def _met_below_floor(self) -> Steps:
        """None cleared the floor, widths too coarse to land above it: the least pruned whose confirmed lower bound
        clears S. A less pruned one whose interval holds S, not measured longer while it could not be accepted,
        is measured longer now (the least pruned first), and taken if its lower bound then clears S."""
        tried: set[int] = set()  # each at most once, even where the measurer has no longer measurement
        while True:
            plain = [c for c in self.trace if (c.measured.confirmed or not self.settings.confirm) and self._bound_clears(c)]
            best = max(plain, key=lambda c: c.fraction, default=None)
            undecided = [c for c in self.trace if c.same_as is None and id(c) not in tried
                         and self.rule.wants_longer(c.measured) and (best is None or c.fraction > best.fraction)]
            if not undecided:
                return best
            chosen = max(undecided, key=lambda c: c.fraction)
            tried.add(id(chosen))
            yield from self.rule.confirming(chosen.measured, self.dense, chosen.result.program)

    def _bracket(self) -> tuple[WidthCandidate | None, WidthCandidate | None]:
        """The least pruned candidate that met the budget and the most pruned one that missed it, by the
        latest (confirmed, where it was) figures."""
        met = [c for c in self.trace if self.meets(c)]
        missed = [c for c in self.trace if not self.meets(c)]
        good = max(met, key=lambda c: c.fraction) if met else None
        bad = min(missed, key=lambda c: c.fraction) if missed else None
        return good, bad

    def _next(self, good: WidthCandidate | None, bad: WidthCandidate | None) -> float | None:
        """The next fraction to try, or None when the search has nowhere left to go: the fraction at which the
        measured speed-ups, read as speed-up = c * fraction^k (a straight line in log-log), reach the middle
        of the acceptance window [S, S (1 + tolerance)]. Between a candidate that met and one that missed,
        the line through them, kept inside their bracket (regula falsi, an end left in place drawn in:
        speedup_curve.bracket_ends); with none missed, the dense model is the one that missed (1.0x at fraction
        1); with none met, the line through the two nearest candidates, or k = -1 (latency proportional to MACs)
        with one. Aiming at the window rather than stepping by a fixed factor keeps a near miss from cutting far
        more than the budget needs."""
        anchor = bad if bad is not None else good
        if anchor is None:  # nothing measured yet: no line to aim along
            return None
        margin = self._margin()  # the middle (in log) of the points that can be accepted: [S margin, S (1 + tolerance)]
        aim = math.log(self._wanted_speedup(anchor) * math.sqrt(margin * (1 + self.settings.tolerance)))
        # nothing missed yet: the dense model does, at 1.0x by definition, so the search brackets against it (a line
        # from two noisy readings of the wrong slope stepped to the dense model and measured it)
        missed = bad if bad is not None or good is None or self._wanted_speedup(good) <= 1 else DENSE
        if good is not None and missed is not None:
            low, high = sorted((math.log(good.fraction), math.log(missed.fraction)))  # met: the smaller fraction
            margin = BRACKET_MARGIN * (high - low)
            met = [self.meets(c) for c in self.trace if c.same_as is None]
            good_end, missed_end = bracket_ends(good, missed, met, aim)
            fraction = math.exp(min(max(log_fraction_at(aim, missed_end, good_end), low + margin), high - margin))
        else:
            side = [c for c in self.trace if self.meets(c) == self.meets(anchor)]
            nearest = sorted(side, key=lambda c: abs(math.log(c.fraction / anchor.fraction)))[:2]
            step = log_fraction_at(aim, nearest[0], nearest[-1])  # one candidate: the slope -1 line through it
            fraction = min(math.exp(math.log(anchor.fraction) + held(step - math.log(anchor.fraction))), 1.0)
        tried = [c.fraction for c in self.trace]
        if fraction < SMALLEST_FRACTION or any(abs(fraction - t) <= 0.005 for t in tried):
            return None
        return fraction

    def _wanted_speedup(self, c: WidthCandidate) -> float:
        return self.rule.wanted(c.measured)

    def window_top(self, candidate: WidthCandidate) -> float | None:
        """The fastest speed-up the acceptance window holds, S (1 + tolerance) (None without a tolerance): a candidate
        returned above it met no better (coarse widths, readings a busy machine spoilt) and is pruned further than
        the budget needs."""
        tolerance = self.settings.tolerance
        return None if tolerance is None else (1 + tolerance) * self._wanted_speedup(candidate)

    def _margin(self) -> float:
        """The widest speed-up / lower bound of a confirmed candidate, from the floor to 1 + tolerance: wider is a
        disturbed round."""
        margins = [c.speedup / c.measured.lower_bound for c in self.trace if c.measured.confirmed]
        return min(max(margins + [self.rule.floor]), 1 + self.settings.tolerance)

    def _measured(self) -> int:
        """The candidates measured: a step that found an earlier one's widths again is not one more."""
        return sum(c.same_as is None for c in self.trace)

    def _unreachable(self, best: WidthCandidate) -> str:
        return (f"cannot reach {budget_text(self.settings.speedup, self.settings.latency_ms)} by width: the best "
                f"measured was {speedup_text(best.measured)} ({best.measured.ms:.2f} ms, "
                f"{best.result.facts_as(ChannelsRemoved).macs_kept:.3f} of the MACs) after {counted(self._measured(), 'candidate')}"
                + noise_text(best.measured, self._wanted_speedup(best)))


def _shapes(program: Program) -> list[tuple[int, ...]]:
    return [tuple(tensor.shape) for tensor in program.module.state_dict().values()]
