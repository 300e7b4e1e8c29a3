"""choose_for_budget: meet a measured budget with the least damaging mix of width, depth and INT8.

Tries every allowed combination of width, depth and INT8, finds for each the cheapest setting that meets the
budget (measured whole against the dense model), scores its one-shot damage (a KL proxy on the calibration
batches) and keeps the least damaged. The algorithm, the depth/width split and the statistics: see
docs/algorithms.md, 'choose_for_budget'.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from prunefx.graph import Program
from prunefx.passes.budget.candidates import Combination, budget_candidates, candidate_steps
from prunefx.passes.budget.choose_config import ChooseForBudgetConfig
from prunefx.passes.budget.measurement import drive
from prunefx.passes.budget.search import Measured, budget_text, require_latency
from prunefx.passes.core.contract import graph_pass
from prunefx.passes.core.registry import shipped_pass
from prunefx.passes.core.result import Result

__all__ = ["BudgetChosen", "ChooseForBudgetConfig", "budget_candidates", "budget_choice", "candidate_steps",
           "choose_for_budget"]


# every candidate is cut from a copy of the dense Program
@shipped_pass
@graph_pass(config=ChooseForBudgetConfig, in_place=False, writes=("linearize", "kept_channels"))
def choose_for_budget(program: Program, /, *, config: dict | None = None) -> Result:
    settings = ChooseForBudgetConfig.parse(config)
    require_latency("choose_for_budget", settings.latency)
    return budget_choice(settings, drive(candidate_steps(program, settings), settings.latency))


def budget_choice(settings: ChooseForBudgetConfig, candidates: list[Combination]) -> Result:
    """choose_for_budget's Result: the least damaged of the `candidates` that met the budget, its report and
    BudgetChosen."""
    chosen = min((candidate for candidate in candidates if candidate.met), key=_proxy)
    measured, macs_kept = chosen.measured, chosen.macs_kept
    if measured is None or macs_kept is None:  # _fill sets both on every candidate that met
        raise TypeError(f"choose_for_budget: the chosen candidate {chosen.dimensions} was not measured")
    stats = {"budget": budget_text(settings.speedup, settings.latency_ms), "met": True,
             "chosen": list(chosen.dimensions), "speedup": measured.speedup, "ms": measured.ms,
             "dense_ms": measured.dense_ms,
             "budget_ms": settings.latency_ms or measured.dense_ms / _wanted_speedup(settings), "proxy": chosen.proxy,
             "macs_kept": macs_kept,
             "candidates": [candidate.to_dict() for candidate in candidates]}
    # a budget above 1x is met by fewer MACs or by INT8 layers: say which happened, do not assume it
    modified = macs_kept < 1.0 or bool(chosen.int8_layers)
    return Result(chosen.program, modified=modified, stats=stats, facts=BudgetChosen(stats["budget"], chosen, measured))


@dataclass(frozen=True)
class BudgetChosen:
    """What choose_for_budget hands to its caller (prunefx.meet_budget's width+depth route): the budget in
    words, the chosen candidate (each dimension's setting) and its measurement."""

    budget: str
    chosen: Combination
    measured: Measured


def _proxy(candidate: Combination) -> float:
    return candidate.proxy if candidate.proxy is not None else math.inf


def _wanted_speedup(settings: ChooseForBudgetConfig) -> float:
    if settings.speedup is None:  # parse() demands exactly one budget: latency_ms is the one
        raise TypeError("choose_for_budget: a speed-up budget was expected")
    return settings.speedup
