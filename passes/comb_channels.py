"""comb_channels: dependency analysis as a pass (CPD's "comb").

Finds every group of coupled channels (graph/channel_groups.py) and stores them on the Program as
JSON under `program.analysis["channel_groups"]`, with the groups that operators without a channel
rule blocked. It rewrites nothing, so `modified` is always False.

Config: `keep` — names of graph nodes whose channels must not be removed.
"""

from __future__ import annotations

from prunefx.graph import Program
from prunefx.graph.channel_groups import find_channel_groups
from prunefx.passes import config_checks as checks
from prunefx.passes.result import Result


def check_config(config: dict) -> None:
    checks.unknown_keys("comb_channels", config, ("keep",))
    checks.names("comb_channels", "keep", config.get("keep", ()))


def comb_channels(program: Program, /, *, config: dict | None = None) -> Result:
    config = config or {}
    check_config(config)
    combing = find_channel_groups(program.module, keep=set(config.get("keep", ())))
    program.analysis["channel_groups"] = {
        "groups": [group.to_dict() for group in combing.groups],
        "blocked": [blocked.to_dict() for blocked in combing.blocked],
    }
    stats = {"groups": len(combing.groups), "channels": sum(g.size for g in combing.groups),
             "blocked_groups": len(combing.blocked),
             "blocking_operators": sorted({op for b in combing.blocked for op in b.operators})}
    return Result(program, modified=False, stats=stats)


comb_channels.check_config = check_config
