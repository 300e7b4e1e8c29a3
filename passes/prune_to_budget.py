"""prune_to_budget: structured channel pruning to a measured speed-up or latency on the target runtime.

A user states a budget, not a MACs fraction, and MACs do not predict latency across widths: this pass searches
the fraction remove_channels keeps (or, given a per-layer `latency_table`, the fraction of the table's time),
measuring every candidate whole beside the dense model; the search is passes/budget/width_search.py (its
configuration passes/budget/width_config.py) and the acceptance rule, with its confirmation,
passes/budget/search.py. The search and why it confirms: see
docs/algorithms.md, 'prune_to_budget'.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from prunefx.graph import Program
from prunefx.passes.budget.measurement import drive, round_to_of
from prunefx.passes.budget.search import CROSS_PROCESS, Measured, budget_text, require_latency
from prunefx.passes.budget.width_config import PruneToBudgetConfig, removal_options
from prunefx.passes.budget.width_search import WidthCandidate, WidthSearch
from prunefx.passes.core.contract import graph_pass
from prunefx.passes.core.registry import shipped_pass
from prunefx.passes.core.result import Result
from prunefx.passes.removal.channels_removed import ChannelsRemoved
from prunefx.passes.remove_channels import RemoveChannelsConfig

# remove_channels' own multiple, when neither the user nor the backend names one
DEFAULT_ROUND_TO: int = RemoveChannelsConfig.default("round_to")
__all__ = ["CROSS_PROCESS", "PruneToBudgetConfig", "WidthChosen", "chosen_result", "prune_to_budget", "width_search"]


@dataclass(frozen=True)
class WidthChosen:
    """What prune_to_budget hands to its caller (choose_for_budget, `prunefx prune`): the fraction of MACs
    chosen, the multiple widths were kept on, the chosen candidate's measurement, every candidate measured
    and what remove_channels did to the chosen one."""

    macs_fraction: float
    round_to: int
    measured: Measured
    trace: list[dict]
    removal: ChannelsRemoved


@shipped_pass
@graph_pass(config=PruneToBudgetConfig, in_place=False, reads=("kept_channels",), writes=("kept_channels",))
def prune_to_budget(program: Program, /, *, config: dict | None = None) -> Result:
    settings = PruneToBudgetConfig.parse(config)
    require_latency("prune_to_budget", settings.latency)
    search = width_search(program, settings)
    return chosen_result(search, drive(search.steps(), settings.latency))


def width_search(program: Program, settings: PruneToBudgetConfig) -> WidthSearch:
    """The search for `settings`' budget on `program`; its `steps()` ask for the measurements it needs."""
    removal = settings.removal if settings.removal is not None else removal_options({})
    round_to = settings.round_to or round_to_of(settings.latency) or DEFAULT_ROUND_TO
    return WidthSearch(program, settings, dataclasses.replace(removal, round_to=round_to, strict=False))


def chosen_result(search: WidthSearch, chosen: WidthCandidate) -> Result:
    """prune_to_budget's Result for the candidate `search` chose: its Program, the search report, WidthChosen."""
    settings, round_to = search.settings, search.removal.round_to
    stats = {"budget": budget_text(settings.speedup, settings.latency_ms), "met": True,
             "tolerance": settings.tolerance, "confirmed": chosen.measured.confirmed, "speedup": chosen.speedup,
             "interval": chosen.measured.to_dict().get("interval"), "round_to": round_to,
             "dense_ms": chosen.measured.dense_ms, "ms": chosen.measured.ms,
             "macs_fraction": chosen.macs_fraction, "searched": search.target, "chosen": chosen.measured.to_dict(),
             **({"window_top": top} if (top := search.window_top(chosen)) is not None else {}),
             **({"table_error": error} if (error := search.table_error()) is not None else {}),
             "trace": [c.to_dict() for c in search.trace],
             "remove_channels": chosen.result.stats}
    facts = WidthChosen(chosen.macs_fraction, round_to, dataclasses.replace(chosen.measured), stats["trace"],
                        chosen.result.facts_as(ChannelsRemoved))
    return Result(chosen.result.program, modified=chosen.result.modified, stats=stats, facts=facts)
