"""The three routes to a measured budget, each its budget pass's search run here, the measurements it asks for
answered from this frame (passes/budget/measurement.py) and the result verified as a Pipeline would:

- width: prune_to_budget (then every batch norm recalibrated, when asked);
- depth: depth_to_budget's search, then merge_blocks unmeasured, which gives exactly the network measured;
- width+depth: choose_for_budget's width + depth combination alone: depth ranks and merges blocks, then the
  width search measures the whole stack against the dense model.

Each returns the budget pass's search report and accepted measurement, or raises the pass's
BudgetUnreachable. What is accepted is the one rule of passes/budget/search.Acceptance.
"""

from __future__ import annotations

from dataclasses import dataclass

from prunefx.graph import Program, verify
from prunefx.graph.depth.blocks import find_blocks
from prunefx.graph.depth.branch_drop import droppable_blocks
from prunefx.passes.budget.measurement import Asked, Steps, answerer
from prunefx.passes.budget.search import Measured
from prunefx.passes.choose_for_budget import (
    BudgetChosen,
    ChooseForBudgetConfig,
    budget_choice,
    candidate_steps,
)
from prunefx.passes.core.pipeline import Pipeline, PipelineResult
from prunefx.passes.depth_to_budget import DepthChosen, DepthToBudgetConfig, depth_result, depth_search
from prunefx.passes.linearize_blocks import mergeable_blocks
from prunefx.passes.prune_to_budget import PruneToBudgetConfig, WidthChosen, chosen_result, width_search
from prunefx.passes.recalibrate_batchnorm import recalibrate_batchnorm


@dataclass(frozen=True)
class Budget:
    """The budget and how every route searches for it."""

    speedup: float | None
    latency_ms: float | None
    tolerance: float | None
    confirm: bool
    max_candidates: int

    def passes(self) -> dict:
        return {"speedup": self.speedup, "latency_ms": self.latency_ms, "confirm": self.confirm}


@dataclass
class Reached:
    """A route's answer: the Pipeline's result, the search's report and the accepted measurement."""

    result: PipelineResult
    search: dict
    measured: Measured
    candidates: list[dict]


def width(program: Program, budget: Budget, measurer, options: dict, calibration, recalibrate: bool) -> Reached:
    """The width search run here, its measurements answered by `measurer` from this frame (every call goes
    downward: route -> runtime), then the chosen Program verified as a Pipeline would, and recalibrated."""
    config = {**options, **budget.passes(), "tolerance": budget.tolerance, "max_candidates": budget.max_candidates,
              "latency": measurer}
    if calibration is not None:
        config.setdefault("calibration", calibration)  # a caller's own width calibration (noise) stands
    settings = PruneToBudgetConfig.parse(config)
    search = width_search(program, settings)
    chosen = chosen_result(search, measured_by(measurer, search.steps()))
    verify(chosen.program, reexport=True)
    steps: list = [("prune_to_budget", chosen)]
    if calibration is not None and recalibrate:
        steps += Pipeline([(recalibrate_batchnorm, {"data": calibration})], verify="full").run(chosen.program).steps
    result = PipelineResult(steps[-1][1].program, steps)
    search_report = {key: value for key, value in chosen.stats.items() if key != "remove_channels"}
    return Reached(result, search_report, chosen.facts_as(WidthChosen).measured, search_report["trace"])


def measured_by(measurer, steps: Steps):
    """Run a search's `steps` to the end, answering each Ask with `measurer` (passes/budget/measurement.py's
    drive, run in this frame so that the runtime is called from above); the steps' result. On a terminal a bar
    counts the measurements and shows the last."""
    with Asked(steps) as asks:
        for ask in asks:
            method = answerer(measurer, ask)
            asks.answer(None if method is None else method(ask.dense, ask.candidate))
    return asks.result


def depth(program: Program, budget: Budget, measurer, options: dict, calibration) -> Reached:
    """The depth search run here, its measurements answered by `measurer` from this frame, the chosen blocks
    merged as the search merged and measured it, re-exported as a Pipeline would."""
    settings = DepthToBudgetConfig.parse({"recalibrate": False, **options, **budget.passes(),
                                          "tolerance": budget.tolerance, "calibration": calibration})
    search = depth_search(program, settings)
    candidate = measured_by(measurer, search.steps())
    chosen = depth_result(search, candidate)
    # the search merged this candidate on a copy and checked the merge exact; only the re-export is left
    verify(candidate.merged, reexport=True)
    result = PipelineResult(candidate.merged, [("depth_to_budget", chosen), ("merge_blocks", candidate.merging)])
    search_report = {key: value for key, value in chosen.stats.items() if key != "linearize_blocks"}
    return Reached(result, search_report, chosen.facts_as(DepthChosen).measured, search_report["trace"])


def joint(program: Program, budget: Budget, measurer, options: dict, calibration, recalibrate: bool,
          depth_share: float | None, depth_options: dict) -> Reached:
    config = {**budget.passes(), "dimensions": ["width", "depth"], "combinations": [["width", "depth"]],
              "depth_share": depth_share, "tolerance": budget.tolerance, "max_candidates": budget.max_candidates,
              "recalibrate": recalibrate, "latency": measurer, "calibration": calibration,
              # the width search reads choose_for_budget's calibration; None: remove_channels' own default
              "width": {key: value for key, value in options.items() if key != "calibration" and value is not None},
              "depth": {key: value for key, value in depth_options.items() if value is not None}}
    settings = ChooseForBudgetConfig.parse(config)
    chosen = budget_choice(settings, measured_by(measurer, candidate_steps(program, settings)))
    verify(chosen.program, reexport=True)
    result = PipelineResult(chosen.program, [("choose_for_budget", chosen)])
    choice = chosen.facts_as(BudgetChosen)
    search = {"budget": choice.budget, "met": True,
              **{key: value for key, value in choice.chosen.to_dict().items() if key not in ("width_trace", "proxy", "met")},
              "trace": choice.chosen.width_trace or [], "depth_share": depth_share}
    return Reached(result, search, choice.measured, search["trace"])


def has_depth_route(program: Program) -> bool:
    """Whether a block may become affine once linearised or a residual branch be dropped: the depth route's first
    test, which merges nothing to count what a merge saves (depth_blocks does)."""
    return any(block.affine for block in find_blocks(program.module)) or bool(droppable_blocks(program))


def depth_blocks(program: Program) -> tuple[int, str]:
    """(how many blocks the depth route can take, and how): merged when any block becomes affine once linearised
    and its merge saves MACs (those linearize_blocks ranks), else dropped whole residual branches (depth_to_budget's
    route "auto"; ConvNeXtV2's GRN)."""
    mergeable = len(mergeable_blocks(program))
    return (mergeable, "merge") if mergeable else (len(droppable_blocks(program)), "drop")
