"""comb_channels: dependency analysis as a pass (CPD's "comb").

Finds every group of coupled channels (graph/channels/groups.py) and hands them to its caller as typed
facts (ChannelGroups: each group and each group that operators without a channel rule blocked, as JSON);
its stats count them for the report. It rewrites nothing, so `modified` is always False. The groups
are not stored on the Program: the first width change would make them stale, and every pass that
removes channels combs the graph it is given.

Config: `keep` — names of graph nodes whose channels must not be removed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from prunefx.graph import Program
from prunefx.graph.channels.groups import find_channel_groups
from prunefx.passes.core import config_checks as checks
from prunefx.passes.core.contract import graph_pass
from prunefx.passes.core.pass_config import PassConfig, option
from prunefx.passes.core.registry import shipped_pass
from prunefx.passes.core.result import Result


@dataclass
class CombChannelsConfig(PassConfig):
    owner: ClassVar[str] = "comb_channels"

    keep: list[str] = option([], help="graph node whose channels must not be removed")


@dataclass(frozen=True)
class ChannelGroups:
    """What comb_channels hands to its caller: every group and every blocked group, as JSON."""

    groups: list[dict] = field(default_factory=list)
    blocked: list[dict] = field(default_factory=list)


# it reads the Program it is given and returns it unchanged
@shipped_pass
@graph_pass(config=CombChannelsConfig, in_place=True)
def comb_channels(program: Program, /, *, config: dict | None = None) -> Result:
    settings = CombChannelsConfig.parse(config)
    checks.nodes_in("comb_channels", "keep", settings.keep, program)
    combing = find_channel_groups(program.module, keep=set(settings.keep))
    facts = ChannelGroups([group.to_dict() for group in combing.groups],
                          [blocked.to_dict() for blocked in combing.blocked])
    stats = {"groups": len(combing.groups), "channels": sum(g.size for g in combing.groups),
             "blocked_groups": len(combing.blocked),
             "blocking_operators": sorted({op for b in combing.blocked for op in b.operators})}
    return Result(program, modified=False, stats=stats, facts=facts)
