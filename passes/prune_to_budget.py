"""prune_to_budget: structured channel pruning to a measured speed-up or latency on the target runtime.

A user states a budget, not a MACs fraction, and MACs do not predict latency across widths: this pass searches
the fraction remove_channels keeps (or, given a per-layer `latency_table`, the fraction of the table's time),
measuring every candidate whole beside the dense model; the search is passes/budget/width_search.py and the
acceptance rule, with its confirmation, passes/budget/search.py. The search and why it confirms: see
docs/algorithms.md, 'prune_to_budget'.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from prunefx.graph import Program
from prunefx.passes.budget.measurement import drive, round_to_of
from prunefx.passes.budget.search import CROSS_PROCESS, Measured, budget_text, require_latency
from prunefx.passes.budget.width_search import WidthCandidate, WidthSearch
from prunefx.passes.core.config_checks import ConfigError
from prunefx.passes.core.contract import graph_pass
from prunefx.passes.core.pass_config import PassConfig, option
from prunefx.passes.core.registry import shipped_pass
from prunefx.passes.core.result import Result
from prunefx.passes.removal.channels_removed import ChannelsRemoved
from prunefx.passes.remove_channels import RemoveChannelsConfig

# remove_channels' own multiple, when neither the user nor the backend names one
DEFAULT_ROUND_TO: int = RemoveChannelsConfig.default("round_to")
SEARCHED = ("macs", "params", "channels", "layer_time")  # remove_channels' targets: the search sets one
# remove_channels' options a budget config takes beside its own (round_to is its own: the backend's by default)
REMOVAL_OPTIONS = frozenset(field.name for field in dataclasses.fields(RemoveChannelsConfig)) - {*SEARCHED, "round_to"}
__all__ = ["CROSS_PROCESS", "PruneToBudgetConfig", "WidthChosen", "chosen_result", "prune_to_budget", "width_search"]


@dataclass
class PruneToBudgetConfig(PassConfig):
    """The budget and its search, composing the options of every candidate's remove_channels (`removal`, its
    target left to the search). A flat mapping still parses: keys of remove_channels go to `removal`."""

    owner: ClassVar[str] = "prune_to_budget"

    speedup: float | None = option(low=1.0, low_open=True, help="measured speed-up over the dense model to reach")
    latency_ms: float | None = option(low=0.0, low_open=True, help="measured latency to stay under, in ms")
    tolerance: float = option(0.15, low=0.0, help="accept a candidate up to this fraction faster than the budget")
    max_candidates: int = option(8, low=1, help="most candidate models measured")
    start_speedup: float | None = option(low=0.0, low_open=True, cli=False,
                                         help="the speed-up the input already has over the measured reference "
                                              "(width after depth): the first guess removes only the rest")
    confirm: bool = option(True, help="measure a candidate again, longer, before accepting it")
    latency: Callable | None = option(source="latency", help="(dense, candidate) -> (dense ms, candidate ms, spread)")
    round_to: int | None = option(None, low=1, help="keep every width a multiple of N (default: the multiple the "
                                                    "measuring backend runs fastest, else 8)")
    removal: RemoveChannelsConfig | None = option(cli=False, help="each candidate's remove_channels options "
                                                                  "(its target is the search's)")

    @classmethod
    def parse(cls, mapping: Mapping[str, Any] | None = None) -> PruneToBudgetConfig:
        if isinstance(mapping, cls):
            return mapping
        mapping = dict(mapping or {})
        searched = [key for key in SEARCHED if mapping.get(key) is not None]
        if searched:
            raise ConfigError(f"{cls.owner}: '{searched[0]}' is not an option here: the budget sets the MACs "
                              "(or, with a latency_table, the table's time)")
        given_removal = mapping.get("removal")
        if "strict" in mapping or (isinstance(given_removal, Mapping) and "strict" in given_removal):
            raise ConfigError(f"{cls.owner}: 'strict' is not an option here: each candidate takes the fraction "
                              "remove_channels reaches, and the measurement decides")
        removal = {key: mapping.pop(key) for key in list(mapping) if key in REMOVAL_OPTIONS}
        if mapping.get("removal") is None:
            mapping["removal"] = _removal_options(removal)
        elif removal:
            raise ConfigError(f"{cls.owner}: give remove_channels' options in 'removal' or beside it, not both")
        return super().parse(mapping)

    def check(self) -> None:
        if (self.speedup is None) == (self.latency_ms is None):
            raise ConfigError(f"{self.owner} needs exactly one budget: speedup or latency_ms")

    @classmethod
    def inputs(cls) -> dict[str, str]:
        return {**super().inputs(), **RemoveChannelsConfig.inputs()}

    def reads(self, key: str) -> bool:
        return key == "latency" or self.removal is None or self.removal.reads(key)


def _removal_options(options: dict) -> RemoveChannelsConfig:
    """remove_channels' options without a target: checked as remove_channels checks them, with the target the
    search will set standing in (the table's time where a latency table prices it)."""
    target = "layer_time" if options.get("latency_table") is not None else "macs"
    try:
        parsed = RemoveChannelsConfig.parse({**options, target: 1.0})
    except ConfigError as error:
        raise ConfigError(str(error).replace(f"{RemoveChannelsConfig.owner}:", f"{PruneToBudgetConfig.owner}:", 1)) \
            from None
    return dataclasses.replace(parsed, **{target: None})


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
    removal = settings.removal if settings.removal is not None else _removal_options({})
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
             **({"table_error": error} if (error := search.table_error()) is not None else {}),
             "trace": [c.to_dict() for c in search.trace],
             "remove_channels": chosen.result.stats}
    facts = WidthChosen(chosen.macs_fraction, round_to, dataclasses.replace(chosen.measured), stats["trace"],
                        chosen.result.facts_as(ChannelsRemoved))
    return Result(chosen.result.program, modified=chosen.result.modified, stats=stats, facts=facts)
