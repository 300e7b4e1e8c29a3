"""prune_to_budget's configuration (the pass: passes/prune_to_budget.py): the budget, its search, and the
options of every candidate's remove_channels. Torch-free: `prunefx prune` makes its flags of these fields
without importing the pass."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from prunefx.graph.errors import printable
from prunefx.passes.core.config_checks import ConfigError
from prunefx.passes.core.pass_config import PassConfig, option
from prunefx.passes.removal.config import RemoveChannelsConfig

SEARCHED = ("macs", "params", "channels", "layer_time")  # remove_channels' targets: the search sets one
# remove_channels' options a budget config takes beside its own (round_to is its own: the backend's by default)
REMOVAL_OPTIONS = frozenset(field.name for field in dataclasses.fields(RemoveChannelsConfig)) - {*SEARCHED, "round_to"}


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
        known = {field.name for field in dataclasses.fields(cls)} | REMOVAL_OPTIONS - {"strict"}  # refused above
        unknown = sorted(str(key) for key in mapping if key not in known)
        if unknown:
            raise ConfigError(f"{cls.owner}: unknown option '{printable(unknown[0])[:40]}' "
                              f"(known: {', '.join(sorted(known))})")
        removal = {key: mapping.pop(key) for key in list(mapping) if key in REMOVAL_OPTIONS}
        if mapping.get("removal") is None:
            mapping["removal"] = removal_options(removal)
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


def removal_options(options: dict) -> RemoveChannelsConfig:
    """remove_channels' options without a target: checked as remove_channels checks them, with the target the
    search will set standing in (the table's time where a latency table prices it)."""
    target = "layer_time" if options.get("latency_table") is not None else "macs"
    try:
        parsed = RemoveChannelsConfig.parse({**options, target: 1.0})
    except ConfigError as error:
        raise ConfigError(str(error).replace(f"{RemoveChannelsConfig.owner}:", f"{PruneToBudgetConfig.owner}:", 1)) \
            from None
    return dataclasses.replace(parsed, **{target: None})
