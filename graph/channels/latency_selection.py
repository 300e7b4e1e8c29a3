"""Latency-aware channel selection: spend importance per millisecond saved, not per MAC.

A knapsack in the spirit of HALP (hardware-aware latency pruning): every group can drop to any of its
allowed widths, each drop loses the importance of the channels it removes (the group's least important
first) and saves the time the latency table gives for the layers it narrows (plan_latency.py). Starting
from the dense widths, the drop with the least importance lost per millisecond saved is taken, again and
again, until the plan's time is at most the target. Drops of several steps at once are candidates too: a
backend's time often falls in stairs, and a single step on a stair saves nothing. The last drop is chosen
to land within the tolerance of the target where one does (the fewest importance lost among those);
a drop that saves no time is never taken.

To a target of MACs (parameters, channels), `fastest`: the fastest plan by the table that loses no more
importance than the threshold choice's own, drops priced by importance lost less time saved per MAC removed
(by importance per millisecond alone, the cuts reach the MACs in layers fast per MAC: docs/algorithms.md).

A drop of one group changes only the layers it touches, so after each drop only the groups that share a
layer with it are priced again. A group holding no grid factor class (no head) takes nothing along when it
narrows, so its drops are priced from counts: each touched layer loses the group's channels in its dims.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from prunefx.graph.channels.removal import expand_mask

COVERING_WEIGHTS = (0.0, *(2.0 ** k for k in range(-4, 6)))  # importance against time, time alone first


@dataclass(frozen=True)
class Drop:
    group: int
    width: int
    lost: float   # importance of the channels removed (the ranking's normalised scores)
    saved: float  # ms the table says the drop saves
    macs: float = 0.0  # MACs the timed layers it narrows lose

    @property
    def ratio(self) -> float:
        return self.lost / self.saved


class LatencyKnapsack:
    """Greedy importance-per-millisecond selection over a Selector's groups, widths and scores."""

    def __init__(self, selector):
        self.selector, self.latency = selector, selector.latency
        self.lost_prefix = [np.concatenate([[0.0], np.cumsum(scores)]) for scores in selector.sorted_normalised]
        self.touched = self._touched_layers()
        self.neighbours = [[h for h, others in enumerate(self.touched) if others & mine]
                           for mine in self.touched]
        self.epsilon = 1e-9 * max(self.latency.dense_ms, 1e-12)  # a saving below this is none
        self.ranked = [group.classes[order] for group, order in zip(selector.combing.groups, selector.orders)]
        taking_along = selector.combing.analysis.factor_slices.taking_along
        # heads among a group's classes (what goes along is expand_mask's to find), or an attention's mean head dim
        # among its widths: its plans' widths are found by `widths`, not by counting its classes
        averaged = {layer for layer in range(len(self.latency.layers)) if self.latency.parts[2 * layer + 1] > 1}
        self.counted = [None if np.isin(ranked, taking_along).any() or self.touched[group] & averaged
                        else self._occurrences(ranked, group) for group, ranked in enumerate(self.ranked)]

    def _touched_layers(self) -> list[set[int]]:
        """The timed layers each group narrows: those whose widths change when all its channels go."""
        dense = self.latency.widths(np.zeros(self.latency.cost_model.classes, dtype=bool))
        touched = []
        for group in self.selector.combing.groups:
            mask = np.zeros(self.latency.cost_model.classes, dtype=bool)
            mask[group.classes] = True
            touched.append({i for i, (a, b) in enumerate(zip(dense, self.latency.widths(mask))) if a != b})
        return touched

    def widths(self, goal: float, low: float, high: float, measure: Callable[[list[int]], float] | None = None,
               order: Callable[[Drop], tuple[float, int]] | None = None) -> list[int]:
        """Kept widths whose table time (ms) is at most `goal`, landing in [low, high] where a last drop can;
        the dense widths' neighbourhood is left as soon as a drop saves time. Given `measure` (kept widths ->
        a MACs fraction, say), `goal`, `low` and `high` bound that measure instead. `order`: which drop goes
        first (default: the least importance per millisecond saved)."""
        kept = [int(widths[-1]) for widths in self.selector.widths]
        current = self.latency.ms(self.selector._mask(kept)[0]) if measure is None else measure(kept)

        def after(drop: Drop) -> float:  # the measure once `drop` is taken (a time: its saving is priced already)
            return current - drop.saved if measure is None else measure(_dropped(kept, drop))

        drops, order = [self._drops(kept, g) for g in range(len(kept))], order or _greedy_order
        while current > goal:
            best = min((min(group_drops, key=order) for group_drops in drops if group_drops),
                       key=order, default=None)
            if best is None:
                break
            landed = after(best)
            if landed < low:  # past the target's tolerance: land in it if a drop can
                if current <= high:
                    break
                landing = [d for group_drops in drops
                           for d in _landing(group_drops, after, low, high, counted=measure is not None)]
                if landing:
                    best = min(landing, key=lambda d: (d.lost, -d.width))
                    landed = after(best)
            kept[best.group] = best.width
            current = landed
            for h in self.neighbours[best.group]:
                drops[h] = self._drops(kept, h)
        return kept

    def fastest(self, goal: float, low: float, high: float, measure: Callable[[list[int]], float],
                reference: list[int]) -> list[int]:
        """At a target other than time (MACs, say; `measure`: kept widths -> its fraction): the plan the table
        says is fastest among those within [low, high] that lose no more importance than `reference` (the MACs
        choice's widths): `reference` itself, the plan of the least importance per millisecond, and the covering
        greedy's (covering_order) at growing weights of importance against time, up to the first whose plan loses
        no more than `reference`: the fastest the weights give, since a larger weight buys importance with time."""
        budget = self.lost(reference)

        def allowed(kept: list[int]) -> bool:
            return self.lost(kept) <= budget and low <= measure(kept) <= high

        per_ms = self.widths(goal, low, high, measure)
        found = [reference, per_ms] if allowed(per_ms) else [reference]
        for weight in COVERING_WEIGHTS:
            kept = self.widths(goal, low, high, measure, order=self.covering_order(weight))
            if allowed(kept):
                found.append(kept)
                break
        return min(found, key=lambda kept: self.latency.ms(self.selector._mask(kept)[0]))  # ties: the reference

    def covering_order(self, weight: float) -> Callable[[Drop], tuple[float, int]]:
        """A target of MACs must be reached, and each drop gets there by the MACs it removes: a drop's price is
        `weight` x its share of all importance lost less its share of the dense time saved, per share of the
        timed layers' MACs it removes; the cheapest per MAC first (a covering knapsack's greedy order)."""
        importance = max(float(sum(prefix[-1] for prefix in self.lost_prefix)), 1e-12)
        macs, dense_ms = max(float(sum(self.latency.dense_macs)), 1e-12), max(self.latency.dense_ms, 1e-12)

        def order(drop: Drop) -> tuple[float, int]:
            price = weight * drop.lost / importance - drop.saved / dense_ms
            return price / max(drop.macs / macs, 1e-12), -drop.width
        return order

    def lost(self, kept: list[int]) -> float:
        """The importance a plan's widths lose: each group's least important channels beyond its kept width."""
        groups = self.selector.combing.groups
        return float(sum(prefix[group.size - width] for prefix, group, width in zip(self.lost_prefix, groups, kept)))

    def _occurrences(self, ranked: np.ndarray, group: int) -> np.ndarray:
        """How often each of the group's classes (least important first) stands in each dim of each layer it
        touches: rows (layer 0 in, layer 0 out, layer 1 in, ...)."""
        rows = []
        for layer in sorted(self.touched[group]):
            for span in (2 * layer, 2 * layer + 1):
                labels = np.sort(self.latency.spans[span])
                rows.append(np.searchsorted(labels, ranked, "right") - np.searchsorted(labels, ranked, "left"))
        return np.array(rows, dtype=np.int64).reshape(len(rows), len(ranked))

    def _drops(self, kept: list[int], group: int) -> list[Drop]:
        """Every drop of `group` from its kept width to a narrower allowed one that saves time."""
        layers = sorted(self.touched[group])
        if not layers:
            return []
        size, planned = self.selector.combing.groups[group].size, self.selector._mask(kept)[0]
        alive = ~expand_mask(self.selector.combing.analysis, planned)  # found once: the plan's surviving classes
        widths = self.latency.surviving_widths(alive, layers)
        now, macs_now = self.latency.times_at(layers, widths).sum(), self._macs(layers, widths)
        prefix, drops = self.lost_prefix[group], []
        for width, ms, macs in self._trial_times(planned, (alive, widths), group, layers, kept[group]):
            saved = float(now - ms)
            if saved > self.epsilon:
                lost = float(prefix[size - width] - prefix[size - kept[group]])
                drops.append(Drop(group, width, max(lost, 0.0), saved, max(macs_now - macs, 0.0)))
        return drops

    def _macs(self, layers: list[int], widths) -> float:
        return float(sum(self.latency.macs_at(layer, int(a), int(b)) for layer, (a, b) in zip(layers, widths)))

    def _trial_times(self, planned: np.ndarray, surviving: tuple, group: int, layers: list[int], kept: int):
        """(width, the touched layers' time, their MACs) for each allowed width of `group` narrower than `kept`, the
        others as `planned`: a width's removal is the plan's with the group's next least important classes added.
        `surviving`: the plan's surviving classes and the touched layers' widths."""
        narrower = [int(width) for width in self.selector.widths[group] if width < kept]
        size, ranked, counted = self.selector.combing.groups[group].size, self.ranked[group], self.counted[group]
        if counted is None:  # widths not counted from its classes (see __init__)
            for width in narrower:
                trial = planned.copy()
                trial[ranked[: size - width]] = True
                widths = self.latency.widths(trial, layers)
                yield width, self.latency.times_at(layers, widths).sum(), self._macs(layers, widths)
            return
        alive, plan_widths = surviving
        widths = np.array(plan_widths, dtype=np.int64).reshape(-1)  # in, out, in, ...
        lost = np.cumsum(np.concatenate([np.zeros((len(counted), 1), dtype=np.int64),
                                         counted * alive[ranked]], axis=1), axis=1)  # [dim, classes gone]
        if not narrower:
            return
        left = widths[:, None] - lost[:, size - np.array(narrower)]                   # [in, out, in, ..., widths]
        ins, outs = left[0::2], left[1::2]
        # every width's times summed over the layers as layer_ms's are (numpy's sum of a row), its MACs as _macs's
        # (one after the other): the same floats as pricing one width at a time
        times = np.ascontiguousarray(self.latency.times_at_many(layers, ins, outs).T).sum(axis=1)
        macs = np.cumsum(self.latency.macs_at_many(layers, ins, outs), axis=0)[-1]
        for width, ms, counted_macs in zip(narrower, times.tolist(), macs.tolist()):
            yield width, ms, counted_macs


def _landing(drops: list[Drop], after: Callable[[Drop], float], low: float, high: float, counted: bool) -> list[Drop]:
    """The drops of one group (narrowest width first) after which the measure lands in [low, high]. A count (MACs,
    parameters, channels) rises with the width kept, so those drops are one run, found by bisection at its two ends:
    few plans counted, not every drop's. A table's time need not rise with the width: every drop is tried."""
    if not counted:
        return [drop for drop in drops if low <= after(drop) <= high]
    measured: dict[int, float] = {}

    def value(index: int) -> float:
        if index not in measured:
            measured[index] = after(drops[index])
        return measured[index]

    start = bisect.bisect_left(range(len(drops)), True, key=lambda index: value(index) >= low)
    stop = bisect.bisect_left(range(start, len(drops)), True, key=lambda index: value(index) > high) + start
    return drops[start:stop]


def _dropped(kept: list[int], drop: Drop) -> list[int]:
    return kept[:drop.group] + [drop.width] + kept[drop.group + 1:]


def _greedy_order(drop: Drop) -> tuple[float, int]:
    """Least importance per ms first; at equal ratios the smaller drop (the wider width)."""
    return drop.ratio, -drop.width


def ms_saved_per_group(selector, kept: list[int]) -> list[float]:
    """For each group, the table time its cut saves in the planned model: the plan's time with that group
    alone put back to its full width, less the plan's time. A layer between two cut groups counts for
    both, so these need not add up to the whole saving."""
    latency = selector.latency
    planned = latency.ms(selector._mask(kept)[0])
    saved = []
    for index, group in enumerate(selector.combing.groups):
        restored = kept[:index] + [group.size] + kept[index + 1:]
        saved.append(round(latency.ms(selector._mask(restored)[0]) - planned, 6) if kept[index] < group.size
                     else 0.0)
    return saved
