"""comb_channels: dependency analysis as a pass (CPD's "comb").

Finds every group of coupled channels (graph/channels/groups.py) and stores them on the Program as
JSON under `program.analysis.channel_groups`, with the groups that operators without a channel
rule blocked. It rewrites nothing, so `modified` is always False.

Config: `keep` — names of graph nodes whose channels must not be removed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from prunefx.graph import Program
from prunefx.graph.channels.groups import find_channel_groups
from prunefx.passes.contract import graph_pass
from prunefx.passes.pass_config import PassConfig, option
from prunefx.passes.result import Result


@dataclass
class CombChannelsConfig(PassConfig):
    owner: ClassVar[str] = "comb_channels"

    keep: list[str] = option([], help="graph node whose channels must not be removed")


# it records the groups on the Program it is given
@graph_pass(config=CombChannelsConfig, in_place=True, writes=("channel_groups",))
def comb_channels(program: Program, /, *, config: dict | None = None) -> Result:
    settings = CombChannelsConfig.parse(config)
    combing = find_channel_groups(program.module, keep=set(settings.keep))
    program.analysis.channel_groups = {
        "groups": [group.to_dict() for group in combing.groups],
        "blocked": [blocked.to_dict() for blocked in combing.blocked],
    }
    stats = {"groups": len(combing.groups), "channels": sum(g.size for g in combing.groups),
             "blocked_groups": len(combing.blocked),
             "blocking_operators": sorted({op for b in combing.blocked for op in b.operators})}
    return Result(program, modified=False, stats=stats)
