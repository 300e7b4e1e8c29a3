"""What remove_channels (passes/remove_channels.py) did, as typed facts its callers read and its report
writes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class ChannelsRemoved:
    """What remove_channels did, typed: what its callers read (prune_to_budget, prune_while_training,
    `prunefx prune`), and its report (`as_stats()`: the Result's stats, these names as keys)."""

    target: dict[str, Any]  # kind, fraction, met
    importance: str
    importance_fallback_groups: int
    importance_fallback_channels: int
    ranking: str
    round_to: int
    max_ratio: float
    macs_before: int
    macs_after: int
    params_before: int
    params_after: int
    macs_predicted: int
    params_predicted: int
    channels_removed: int
    groups: list[dict]  # id, width_before, width_after, factor, exact, members
    blocked: list[dict]
    compensation: dict | None = None  # compensated and skipped layers, when compensation was asked
    heads: str = "whole"  # whole heads only, or head dims too
    # `obs`: the layers with fewer calibration rows than columns, scored without compensation (layer, rows, columns)
    importance_uncompensated: list[dict] = field(default_factory=list)
    # wall seconds per part (graph/part_seconds.py): read by `prunefx prune`'s report, kept out of the stats,
    # which say what was done and are the same on every run
    seconds: dict[str, float] = field(default_factory=dict, compare=False)

    @property
    def compensated(self) -> bool:
        """Whether some layer's weights were compensated (asked, and a layer lost inputs it could update)."""
        return bool(self.compensation and self.compensation["compensated"])

    @property
    def macs_kept(self) -> float:
        return self.macs_after / self.macs_before

    def as_stats(self) -> dict[str, Any]:
        """The report's keys (report.json of compress and prune), spelled out so that they stay put."""
        stats = {"target": self.target, "importance": self.importance,
                 "importance_fallback_groups": self.importance_fallback_groups,
                 "importance_fallback_channels": self.importance_fallback_channels,
                 "importance_uncompensated": self.importance_uncompensated, "ranking": self.ranking,
                 "round_to": self.round_to, "max_ratio": self.max_ratio, "heads": self.heads,
                 "macs_before": self.macs_before,
                 "macs_after": self.macs_after, "params_before": self.params_before, "params_after": self.params_after,
                 "macs_predicted": self.macs_predicted, "params_predicted": self.params_predicted,
                 "channels_removed": self.channels_removed, "groups": self.groups, "blocked": self.blocked}
        return stats if self.compensation is None else {**stats, "compensation": self.compensation}


def removal_facts(config, target, importance, combing, plan, before, after, compensation,
                  seconds: dict[str, float] | None = None) -> ChannelsRemoved:
    """The facts of one removal: the groups' widths before and after, what was blocked, the counts, and
    where its time went."""
    groups = [{"id": g.id, "width_before": g.size, "width_after": kept, "factor": g.factor, "exact": g.exact,
               "members": [f"{t}:{d}" for t, d in g.members]}
              | ({} if plan.ms_saved is None else {"ms_saved": plan.ms_saved[i]})
              for i, (g, kept) in enumerate(zip(combing.groups, plan.kept))]
    return ChannelsRemoved(
        target={"kind": target.kind, "fraction": target.fraction, "met": plan.target_met, "at_floor": plan.at_floor}
        | ({} if plan.table_ms is None else {"table_ms": plan.table_ms}),
        importance=importance.criterion, importance_fallback_groups=importance.fallback_groups,
        importance_fallback_channels=importance.fallback_channels, importance_uncompensated=importance.uncompensated,
        ranking=config.ranking, round_to=int(config.round_to), max_ratio=float(config.max_ratio),
        heads=config.heads,
        macs_before=before.macs, macs_after=after.macs, params_before=before.params,
        params_after=after.params, macs_predicted=plan.predicted.macs,
        params_predicted=plan.predicted.params,
        channels_removed=int(sum(np.size(gone) for gone in plan.removed)),
        groups=groups, blocked=[b.to_dict() for b in combing.blocked], compensation=compensation,
        seconds=dict(seconds or {}))
