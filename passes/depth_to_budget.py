"""depth_to_budget: linearise the fewest blocks whose merged network meets a measured speed-up or latency.

Ranks the blocks worth linearising once, then bisects the length of that ranking's prefix, measuring each
merged candidate whole against the dense model and accepting by the shared rule (passes/budget/search.py).
The search asks for its measurements (passes/budget/measurement.py): the pass answers them with its
`latency`, prunefx.budget's depth route from its own frame. Returns the chosen blocks linearised, not yet
merged: merge_blocks runs next. The search, the acceptance and
the statistics: see docs/algorithms.md, 'depth_to_budget'.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from prunefx.graph import Program, count
from prunefx.graph.activations import calibration_inputs
from prunefx.graph.counted import counted
from prunefx.graph.depth.branch_drop import drop_branches, drop_damage, droppable_blocks
from prunefx.graph.errors import PrunefxError
from prunefx.passes.budget.depth_config import DepthToBudgetConfig
from prunefx.passes.budget.measurement import Ask, Steps, drive
from prunefx.passes.budget.search import (
    Acceptance,
    BudgetUnreachable,
    Measured,
    budget_text,
    require_latency,
    speedup_text,
)
from prunefx.passes.core.contract import graph_pass
from prunefx.passes.core.pipeline import run_inner
from prunefx.passes.core.registry import shipped_pass
from prunefx.passes.core.result import Result
from prunefx.passes.linearize_blocks import linearize_blocks, ranked_blocks
from prunefx.passes.merge_blocks import merge_blocks


@dataclass
class DepthCandidate:
    blocks: list[str]
    program: Program     # linearised, not merged: what the pass returns
    merging: Result      # merge_blocks' verified Result on a copy of `program`: its Program was measured
    macs_kept: float     # of the merged network, over the dense one
    measured: Measured
    linearize_stats: dict = field(repr=False)

    @property
    def merged(self) -> Program:
        return self.merging.program

    @property
    def speedup(self) -> float:
        return self.measured.speedup

    def to_dict(self) -> dict:
        return {"n": len(self.blocks), "blocks": self.blocks, "macs_kept": self.macs_kept, **self.measured.to_dict()}


@dataclass(frozen=True)
class DepthChosen:
    """What depth_to_budget hands to a pass that runs it (choose_for_budget): the blocks chosen and the
    chosen candidate's measurement, and the route: "merge" (blocks linearised, for merge_blocks) or "drop"
    (their residual branches dropped)."""

    blocks: list[str]
    measured: Measured
    route: str = "merge"


# every candidate is linearised on a copy of the dense Program
@shipped_pass
@graph_pass(config=DepthToBudgetConfig, in_place=False, writes=("linearize",))
def depth_to_budget(program: Program, /, *, config: dict | None = None) -> Result:
    settings = DepthToBudgetConfig.parse(config)
    require_latency("depth_to_budget", settings.latency)
    search = depth_search(program, settings)
    return depth_result(search, drive(search.steps(), settings.latency))


def depth_search(program: Program, settings: DepthToBudgetConfig) -> DepthSearch:
    """The search for `settings`' budget on `program`, its blocks ranked; its `steps()` ask for the measurements
    it needs."""
    if settings.calibration is None:
        raise PrunefxError("depth_to_budget needs 'calibration' data: it ranks the blocks by their damage on it")
    route, names, scores = _ranking(program, settings)
    if not names:
        raise BudgetUnreachable(no_block_message(program, settings.speedup, settings.latency_ms, settings.route),
                                dimension="depth", best=None)
    return DepthSearch(program, names, settings, route, scores)


def depth_result(search: DepthSearch, chosen: DepthCandidate) -> Result:
    """depth_to_budget's Result for the candidate `search` chose: its Program (linearised), the report, DepthChosen."""
    settings = search.settings
    stats = {"budget": budget_text(settings.speedup, settings.latency_ms), "met": True, "speedup": chosen.speedup,
             "route": search.route, "tolerance": settings.tolerance,
             "dense_ms": chosen.measured.dense_ms, "ms": chosen.measured.ms, "blocks": chosen.blocks,
             "confirmed": chosen.measured.confirmed, "interval": chosen.measured.to_dict().get("interval"),
             "chosen": chosen.measured.to_dict(), "trace": [candidate.to_dict() for candidate in search.trace],
             "ranking": [{"name": name, **search.scores.get(name, {})} for name in search.ranked],
             "linearize_blocks": chosen.linearize_stats}
    facts = DepthChosen(chosen.blocks, replace(chosen.measured), search.route)
    return Result(chosen.program, modified=bool(chosen.blocks), stats=stats, facts=facts)


def _ranking(program: Program, settings: DepthToBudgetConfig) -> tuple[str, list[str], dict]:
    """(route, block names best first, their scores): the merge ranking, or, when the route is "drop" or
    "auto" finds no block that merges (ConvNeXtV2's GRN), the droppable blocks by the damage of dropping."""
    route = "merge" if settings.route == "auto" else settings.route
    if settings.ranking is not None and settings.route != "auto":
        return route, list(settings.ranking), {}
    batches = calibration_inputs(program.example_inputs, settings.calibration, what="depth_to_budget")
    names, scores = [], {}
    if route == "merge":
        ranked, scores = ranked_blocks(program, batches, rank=settings.rank, progress=settings.progress,
                                       max_kernel_growth=settings.max_kernel_growth, layer_norms=settings.layer_norms)
        names = [block.name for block in ranked]
    if not names and settings.route != "merge":
        route, blocks = "drop", droppable_blocks(program)
        damage = drop_damage(program, blocks, batches, progress=settings.progress)
        names = sorted(damage, key=damage.get)
        scores = {name: {"damage": value} for name, value in damage.items()}
    if settings.ranking is not None:  # auto with a given ranking: the route found above, the user's order
        names = list(settings.ranking)
    return route, names, scores


def no_block_message(program: Program, speedup: float | None, latency_ms: float | None, route: str = "merge") -> str:
    dropped = ", and none is a residual branch that can be dropped" if route != "merge" else ""
    return (f"cannot reach {budget_text(speedup, latency_ms)}: no block of {program.name} becomes affine once "
            f"linearised and merges into fewer MACs{dropped}")


class DepthSearch:
    """Bisection over the prefix length of the ranking (see the module docstring); `scores`: the ranking's."""

    def __init__(self, dense: Program, ranked: list[str], settings: DepthToBudgetConfig, route: str = "merge",
                 scores: dict | None = None):
        self.dense, self.ranked, self.settings, self.route = dense, ranked, settings, route
        self.scores = scores or {}
        self.rule = Acceptance(settings.speedup, settings.latency_ms, settings.tolerance)
        self.dense_macs = count(dense).macs
        self.trace: list[DepthCandidate] = []

    def meets(self, candidate: DepthCandidate) -> bool:
        """The shared rule's fallback: the bound clears S, whatever the floor (see the module docstring)."""
        return self.rule.bound_clears(candidate.measured)

    def steps(self) -> Steps:
        """The search, asking for each measurement; returns the candidate chosen."""
        everything = yield from self.measuring(len(self.ranked))
        yield from self.confirming(everything)  # decisive either way: confirmed
        if not self.meets(everything):
            raise BudgetUnreachable(self._unreachable(everything), dimension="depth", best=everything.measured)
        missed, met = 0, everything  # n = 0 is the dense model: it never meets a budget (> 1x)
        while len(met.blocks) - missed > 1:
            candidate = yield from self.measuring((missed + len(met.blocks)) // 2)
            # a reading a busy machine took (Timing.busy) is confirmed before it decides either way
            if (self.meets(candidate) or candidate.measured.busy) and self.meets((yield from self.confirming(candidate))):
                met = candidate
            else:
                missed = len(candidate.blocks)
        self._check_overshoot(met, missed)
        return met

    def _check_overshoot(self, met: DepthCandidate, missed: int) -> None:
        """Depth moves in whole blocks: when the fewest that meet the budget land above S (1 + tolerance), an
        independent check would find the model faster than the window [0.95 S, 1.25 S] (ConvNeXtV2-atto
        3x, 8 dropped blocks 2.79x, 9 blocks 3.88x, measured 3.78x elsewhere), so say so instead of returning it."""
        tolerance, wanted = self.settings.tolerance, self._wanted(met.measured)
        if tolerance is None or self.rule.in_window(met.measured):
            return
        below = next((c for c in self.trace if len(c.blocks) == missed), None)
        fewer = f"{counted(missed, 'block')} gave {speedup_text(below.measured)}" if below else "the dense model misses it"
        raise BudgetUnreachable(
            f"cannot reach {budget_text(self.settings.speedup, self.settings.latency_ms)} by depth within "
            f"{tolerance:.0%} above it: {fewer}, {counted(len(met.blocks), 'block')} {speedup_text(met.measured)}, above "
            f"{wanted * (1 + tolerance):.2f}x; whole blocks step past the budget, and a mix with width "
            f"(choose_for_budget) can land between".replace("%", " %", 1), dimension="depth", best=met.measured,
            overshot=True)

    def measuring(self, n: int) -> Steps:
        """The candidate of the first `n` ranked blocks, merged and measured (asked for)."""
        blocks = self.ranked[:n]
        program, stats = self._dropped(blocks) if self.route == "drop" else self._linearized(blocks)
        # on a copy: the trace keeps the returned candidate beside the merged one that was measured
        merged = run_inner(merge_blocks, program, {"max_kernel_growth": self.settings.max_kernel_growth},
                           on_copy=True)
        timing = yield Ask("search", self.dense, merged.program)
        candidate = DepthCandidate(blocks, program, merged, count(merged.program).macs / self.dense_macs,
                                   Measured.of(timing), stats)
        self.trace.append(candidate)
        return candidate

    def _linearized(self, blocks: list[str]) -> tuple[Program, dict]:
        with self.dense.evaluating():  # the candidate, a copy, is in eval mode: what deployment runs
            linearized = run_inner(linearize_blocks, self.dense, {
                "blocks": blocks, "mode": "abrupt", "calibration": self.settings.calibration,
                "recalibrate": self.settings.recalibrate, "layer_norms": self.settings.layer_norms}, on_copy=True)
        return linearized.program, linearized.stats

    def _dropped(self, names: list[str]) -> tuple[Program, dict]:
        """The dense Program with these blocks' residual branches dropped (graph/depth/branch_drop.py); its
        stats in linearize_blocks' shape (nothing linearised) with the dropped blocks."""
        chosen = set(names)
        with self.dense.evaluating():
            program = drop_branches(self.dense, [b for b in droppable_blocks(self.dense) if b.name in chosen])
        return program, {"chosen": [], "dropped": list(names)}

    def confirming(self, candidate: DepthCandidate) -> Steps:
        """Confirmed; measured longer still where the budget lies inside the interval (Measured.straddles)."""
        if self.settings.confirm:
            yield from self.rule.confirming(candidate.measured, self.dense, candidate.merged)
        return candidate

    def _wanted(self, measured: Measured) -> float:
        return self.rule.wanted(measured)

    def _unreachable(self, everything: DepthCandidate) -> str:
        return (f"cannot reach {budget_text(self.settings.speedup, self.settings.latency_ms)} by depth: the best "
                f"measured was {speedup_text(everything.measured)} ({everything.measured.ms:.2f} ms, "
                f"{everything.macs_kept:.3f} of the MACs) with all {len(everything.blocks)} "
                f"{'droppable blocks dropped' if self.route == 'drop' else 'mergeable blocks linearised'}")
