"""Channel selection: which channels of which groups to remove to reach a MACs/params/width target.

A plan removes a prefix of every group's least-important-first list, within its allowed widths (multiples of
`round_to`, at least (1 - max_ratio) of the original, never zero). The local, uniform and global rankings are
each one scalar bisected to the target (then landed in its tolerance where coarse widths jump across it:
target_landing.py), and a plan's cost is predicted exactly without touching the graph;
with a latency table, the global ranking spends importance per millisecond saved, to any target
(latency_selection.py). The rankings: see docs/algorithms.md, 'Channel selection'.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from prunefx.graph.channels.choices import RANKINGS, TARGET_KINDS
from prunefx.graph.channels.groups import ChannelGroup, Combing
from prunefx.graph.channels.latency_selection import LatencyKnapsack, ms_saved_per_group
from prunefx.graph.channels.plan_cost import CostModel
from prunefx.graph.channels.plan_latency import LayerTime, PlanLatency, priced_by
from prunefx.graph.channels.target_landing import TARGET_TOLERANCE, landed
from prunefx.graph.counting import Cost
from prunefx.graph.errors import PrunefxError


@dataclass(frozen=True)
class Target:
    kind: str       # "macs", "params", "channels" or "layer_time" (a latency table's time of the timed layers)
    fraction: float  # the fraction of the dense model's cost to keep

    def __post_init__(self):
        if self.kind not in TARGET_KINDS:
            raise PrunefxError(f"unknown target '{self.kind}' (known: {', '.join(TARGET_KINDS)})")
        if not 0.0 < self.fraction <= 1.0:
            raise PrunefxError(f"target {self.kind}={self.fraction} must be a fraction in (0, 1]")


@dataclass
class Plan:
    kept: list[int]                 # surviving width of every group
    removed: list[np.ndarray]       # removed classes of every group
    predicted: Cost
    achieved: float                 # the fraction kept, in the target's unit (MACs, params, channels, ms)
    target_met: bool
    table_ms: dict | None = None    # with a latency table: the dense and planned time of the timed layers, and at
    #                                 a target other than time the time of the plan the target gives without it
    ms_saved: list[float] | None = None  # with a latency table: per group, see ms_saved_per_group
    at_floor: bool = False          # every group at its smallest allowed width: no smaller target cuts more


def allowed_widths(size: int, step: int, *, max_ratio: float, floor: int = 1) -> np.ndarray:
    """Widths a group of `size` channels may keep, ascending; the last one is the original width.
    `floor` is a lower bound from elsewhere (a width the group had before earlier cuts)."""
    smallest = max(math.ceil((1.0 - max_ratio) * size - 1e-9), min(floor, size), 1)
    widths = [w for w in range(step, size, step) if w >= smallest]
    return np.array(widths + [size], dtype=np.int64)


def width_steps(analysis, groups: list[ChannelGroup], round_to: int) -> list[int]:
    """The step of each group's widths so that every tensor width it sets is a multiple of `round_to`.

    A channel that occupies one index of a tensor dim steps by `round_to`. Some channels occupy m
    indices (the same channel of every group of a grouped conv: m = the number of groups); they step
    by round_to / gcd(round_to, m). When a grid has several prunable factors (heads x head-dims),
    its widest factor (the head-dims) steps by `round_to` and the others (heads) by one: then
    heads x head-dims is a multiple of `round_to` however many heads go.
    """
    round_to = max(int(round_to), 1)
    multipliers = _direct_multipliers(analysis)
    widest, shared = _factor_roles(analysis, groups)
    steps = []
    for group in groups:
        representative = int(group.classes[0])
        if representative in shared:
            steps.append(round_to if representative in widest else 1)
        else:
            steps.append(round_to // math.gcd(round_to, multipliers.get(representative, 1)))
    return steps


def _factor_roles(analysis, groups: list[ChannelGroup]) -> tuple[set[int], set[int]]:
    """Classes that are factors of a grid with several prunable factors, and those of them that
    belong to the widest factor of such a grid."""
    prunable = {int(c) for g in groups if g.factor for c in g.classes}
    widest: set[int] = set()
    shared: set[int] = set()
    for grid in analysis.space.grids:
        candidates = [(factor.size, axis, analysis.classes[factor]) for axis, factor in enumerate(grid.factors)
                      if factor.size and int(analysis.classes[factor[0]]) in prunable]
        if len(candidates) >= 2:
            shared.update(int(c) for _, _, classes in candidates for c in classes)
            widest.update(int(c) for c in max(candidates, key=lambda item: item[:2])[2])
    return widest, shared


def _direct_multipliers(analysis) -> dict[int, int]:
    """For every class labelling a parameter dim directly, the fewest indices it occupies in one."""
    multipliers: dict[int, int] = {}
    for member in analysis.space.members:
        classes, counts = np.unique(analysis.classes[member.labels], return_counts=True)
        for cls, count in zip(classes.tolist(), counts.tolist()):
            multipliers[cls] = min(multipliers.get(cls, count), count)
    return multipliers


def group_widths(combing: Combing, *, round_to: int = 8, max_ratio: float = 0.8, ranking: str = "global",
                 floors: list[int] | None = None) -> list[np.ndarray]:
    """The allowed widths of every group (allowed_widths with each group's step and floor); under uniform
    ranking a grid's factors other than the widest keep their width (head counts kept whole)."""
    steps = width_steps(combing.analysis, combing.groups, round_to)
    floors = floors or [1] * len(combing.groups)
    widths = [allowed_widths(g.size, step, max_ratio=max_ratio, floor=floor)
              for g, step, floor in zip(combing.groups, steps, floors)]
    if ranking == "uniform":  # head counts kept whole: only the widest factor of a grid is cut
        widest, shared = _factor_roles(combing.analysis, combing.groups)
        held = shared - widest
        widths = [np.array([g.size]) if int(g.classes[0]) in held else w for g, w in zip(combing.groups, widths)]
    return widths


def removable_counts(combing: Combing, **options) -> list[int]:
    """How many channels of each group any plan may remove (its size less its smallest allowed width):
    an importance that ranks channels one after another need not rank beyond that (group_widths' options)."""
    return [int(g.size - widths[0]) for g, widths in zip(combing.groups, group_widths(combing, **options))]


def uniform_fractions(groups: list[ChannelGroup], widths: list[np.ndarray], prunable: list[bool],
                      round_to: int) -> list[Fraction]:
    """The kept fractions of uniform ranking: those at which every group it cuts keeps exactly that fraction of
    its channels at an allowed width (hidden 128 and head dims 32 keep 88 and 22 together, never 88 and 24), so
    that one config holds every width. Read off the smallest cut group's widths; 1 (nothing cut) always."""
    cut = [(g.size, set(w.tolist())) for g, w, p in zip(groups, widths, prunable) if p]
    if not cut:
        return [Fraction(1)]
    smallest, allowed = min(cut, key=lambda item: item[0])
    fractions = [Fraction(width, smallest) for width in sorted(allowed)]
    kept = [f for f in fractions if all((size * f).denominator == 1 and int(size * f) in sizes for size, sizes in cut)]
    if kept == [Fraction(1)]:
        raise PrunefxError(f"uniform ranking: no width below the whole keeps every group's channels in one "
                           f"proportion at round_to {round_to} (group widths {', '.join(sorted({str(s) for s, _ in cut}, key=int))}): "
                           "use a smaller round_to, or local ranking")
    return kept


class Selector:
    """Turns importance scores into a removal plan for a target."""

    def __init__(self, module, combing: Combing, scores: list[np.ndarray], *, round_to: int = 8,
                 max_ratio: float = 0.8, ranking: str = "global", comparable: bool = False,
                 floors: list[int] | None = None, layer_time: LayerTime | None = None):
        if ranking not in RANKINGS:
            raise PrunefxError(f"unknown ranking '{ranking}' (use {', '.join(RANKINGS)})")
        if not 0.0 <= max_ratio < 1.0:
            raise PrunefxError(f"max_ratio {max_ratio} must be in [0, 1)")
        self.combing, self.ranking = combing, ranking
        self.cost_model = CostModel(module, combing.analysis)
        self.dense = self.cost_model.cost(np.zeros(int(combing.analysis.classes.max()) + 1, dtype=bool))
        self.latency = PlanLatency(self.cost_model, layer_time) if layer_time is not None else None
        self.orders = [np.argsort(s, kind="stable") for s in scores]
        if comparable:  # scores on one scale across groups (obs): one threshold for all, as they are
            self.sorted_normalised = [np.sort(np.asarray(s, dtype=float)) for s in scores]
        else:
            self.sorted_normalised = [np.sort(s / s.mean()) if s.mean() > 0 else np.zeros_like(s) for s in scores]
        self.widths = group_widths(combing, round_to=round_to, max_ratio=max_ratio, ranking=ranking, floors=floors)
        # a channels target counts the prunable channels: a group held at its width (uniform ranking's head counts)
        # is no part of it, so that channels 0.5 halves every width the ranking cuts
        self.prunable = [len(widths) > 1 for widths in self.widths]
        if ranking == "uniform":
            self.uniform_fractions = uniform_fractions(combing.groups, self.widths, self.prunable, round_to)

    # --- from the scalar knob to widths ------------------------------------------------------------
    def _kept_for(self, knob: float) -> list[int]:
        if self.ranking == "uniform":  # the nearest fraction every cut width holds exactly; ties keep fewer
            fraction = min(self.uniform_fractions, key=lambda f: (abs(float(f) - (1.0 - knob)), f))
            return [int(group.size * fraction) if prunable else group.size
                    for group, prunable in zip(self.combing.groups, self.prunable)]
        kept = []
        for group, widths, normalised in zip(self.combing.groups, self.widths, self.sorted_normalised):
            if self.ranking != "global":
                wanted = group.size * (1.0 - knob)
            else:
                wanted = group.size - int(np.searchsorted(normalised, knob, side="left"))
            kept.append(int(widths[np.argmin(np.abs(widths - wanted))]))  # nearest; ties keep fewer
        return kept

    def _mask(self, kept: list[int]) -> tuple[np.ndarray, list[np.ndarray]]:
        mask = np.zeros(int(self.combing.analysis.classes.max()) + 1, dtype=bool)
        removed = []
        for group, order, width in zip(self.combing.groups, self.orders, kept):
            gone = group.classes[order[: group.size - width]]
            mask[gone] = True
            removed.append(gone)
        return mask, removed

    def _measure(self, target: Target, kept: list[int]) -> float:
        cost = None if target.kind in ("channels", "layer_time") else self.cost_model.cost(self._mask(kept)[0])
        return self._fraction(target, kept, cost)

    def _fraction(self, target: Target, kept: list[int], cost: Cost | None) -> float:
        """The fraction of the dense model a plan keeps, in the target's unit."""
        if target.kind == "channels":
            cut = [(width, g.size) for width, g, prunable in zip(kept, self.combing.groups, self.prunable) if prunable]
            return sum(width for width, _ in cut) / max(sum(size for _, size in cut), 1)
        if target.kind == "layer_time":
            table = priced_by(self.latency)
            return table.ms(self._mask(kept)[0]) / table.dense_ms
        cost = cost if cost is not None else self.cost_model.cost(self._mask(kept)[0])
        return cost.macs / self.dense.macs if target.kind == "macs" else cost.params / self.dense.params

    # --- search ------------------------------------------------------------------------------------
    def plan(self, target: Target, *, iterations: int = 40) -> Plan:
        """Bisection on the knob: the largest model whose cost is at most the target, or, when the
        allowed widths skip over it, the closest on either side. Given a latency table, the global ranking
        is the latency knapsack's instead: to a time, importance lost per millisecond saved; to another target,
        the fastest plan the table finds that loses no more importance than the bisection's."""
        if self.latency is None or self.ranking != "global":
            return self._plan_for(target, self._finished(target, self._bisected(target, iterations)))
        by_time = target.kind == "layer_time"
        goal = target.fraction * (priced_by(self.latency).dense_ms if by_time else 1.0)
        band = [goal * (1 + d * TARGET_TOLERANCE) for d in (0, -1, 1)]
        if by_time:
            return self._plan_for(target, self._finished(target, LatencyKnapsack(self).widths(*band)))
        reference = self._finished(target, self._bisected(target, iterations))
        kept = LatencyKnapsack(self).fastest(*band, functools.partial(self._measure, target), reference)
        return self._plan_for(target, self._finished(target, kept), without_table=reference)

    def _bisected(self, target: Target, iterations: int) -> list[int]:
        low, high = 0.0, 1.0 if self.ranking != "global" else self._global_ceiling()
        best = (abs(self._measure(target, self._kept_for(low)) - target.fraction), low)
        for _ in range(iterations):
            middle = 0.5 * (low + high)
            value = self._measure(target, self._kept_for(middle))
            best = min(best, (abs(value - target.fraction), middle))
            if value > target.fraction:
                low = middle
            else:
                high = middle
        for knob in (low, high):
            best = min(best, (abs(self._measure(target, self._kept_for(knob)) - target.fraction), knob))
        return self._kept_for(best[1])

    def _finished(self, target: Target, kept: list[int]) -> list[int]:
        """`kept`, moved into the target's tolerance where it is outside it (target_landing.py)."""
        if self.ranking == "uniform":  # refining breaks uniformity
            return kept
        return landed(functools.partial(self._measure, target), target.fraction, kept, self.widths,
                      [group.size for group in self.combing.groups])

    def _global_ceiling(self) -> float:
        return max((float(n[-1]) for n in self.sorted_normalised if n.size), default=0.0) + 1.0

    def _plan_for(self, target: Target, kept: list[int], without_table: list[int] | None = None) -> Plan:
        mask, removed = self._mask(kept)
        predicted = self.cost_model.cost(mask)
        achieved = self._fraction(target, kept, predicted)
        met = abs(achieved - target.fraction) <= TARGET_TOLERANCE * target.fraction
        at_floor = all(width == int(widths[0]) for width, widths in zip(kept, self.widths))
        if self.latency is None:
            return Plan(kept, removed, predicted, achieved, met, at_floor=at_floor)
        table_ms = {"dense": round(self.latency.dense_ms, 6), "planned": round(self.latency.ms(mask), 6)}
        if without_table is not None:
            table_ms["without_table"] = round(self.latency.ms(self._mask(without_table)[0]), 6)
        return Plan(kept, removed, predicted, achieved, met, table_ms, ms_saved_per_group(self, kept), at_floor)
