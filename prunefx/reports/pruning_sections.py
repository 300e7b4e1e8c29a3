"""The own keys of `prunefx prune` and `prunefx depth` in report.json: what channel removal did and what depth
did, both always written (null for the dimension a route did not take), so the report of the width, depth
and width+depth routes has one shape."""

from __future__ import annotations

from prunefx.passes.removal.channels_removed import ChannelsRemoved

WIDTH_KEYS = ("target", "importance", "importance_fallback_groups", "importance_uncompensated", "compensated",
              "compensation", "ranking", "round_to", "max_ratio", "heads", "groups", "blocked")


def pruning_sections(*, removal: ChannelsRemoved | None = None, recalibration: dict | None = None,
                     linearize: dict | None = None, merge: dict | None = None, delivered: dict,
                     module: dict | None = None, seconds: dict | None = None) -> dict:
    """`delivered`: write_model's entries (its `parity` is a common key, the rest are these); `module`: the
    write-back into the model's own class (prune --module), null when not asked; `seconds`: the command's stages
    (prunefx/reports/seconds.py), null where it does not time them."""
    return {**_width(removal), "recalibrate_batchnorm": recalibration, "linearize_blocks": linearize,
            "merge_blocks": merge, "module": module, "seconds": seconds,
            **{key: value for key, value in delivered.items() if key != "parity"}}


def _width(removal: ChannelsRemoved | None) -> dict:
    if removal is None:  # the depth route, or width+depth whose widths the budget entry holds
        return dict.fromkeys(WIDTH_KEYS)
    return {"target": removal.target, "importance": removal.importance,
            "importance_fallback_groups": removal.importance_fallback_groups,
            "importance_uncompensated": removal.importance_uncompensated,
            "compensated": removal.compensated, "compensation": removal.compensation,
            "ranking": removal.ranking, "round_to": removal.round_to, "max_ratio": removal.max_ratio,
            "heads": removal.heads, "groups": removal.groups, "blocked": removal.blocked}
