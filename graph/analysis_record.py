"""What passes hand to later passes: one typed record per Program, saved with it (prunefx.json).

Passes communicate through these fields and nothing else; lower layers (graph/, runtime/) read the
typed records, never free-form keys. Each field is owned by the pass that writes it:

    channel_groups         comb_channels          the channel groups and the groups blocked (JSON)
    channel_pruning        remove_channels        its statistics (targets, widths, blocked groups)
    sparsity               sparsify_nm            SparsityRecord: the weights made N:M sparse, kept
                                                  at zero by distill (passes/sparse_masks.py) and
                                                  made semi-structured by runtime/semi_structured.py
    linearize              linearize_blocks       LinearizeRecord: blend buffers raised by distill,
                                                  stripped by merge_blocks once they reach 1
    distillation           distill                its training statistics
    prune_while_training   prune_while_training   its schedule's statistics

A saved record with a field this version does not know is refused when the Program is loaded (a
newer file), as is a field of the wrong type: the record is data from a file, checked like the rest.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from prunefx.graph.errors import PrunefxError, printable


class AnalysisRecordError(PrunefxError):
    """A saved analysis record that does not have the documented form."""


@dataclass
class SparsityRecord:
    pattern: str                       # "2:4", "N:M" or "unstructured"
    criterion: str                     # magnitude | obs | cap
    weights: list[str]                 # tensor names whose zeros must stay zero
    layers: list[dict] = field(default_factory=list)
    skipped: list = field(default_factory=list)


@dataclass
class LinearizeRecord:
    blends: dict[str, str] = field(default_factory=dict)    # blend buffer -> block name, pending
    ramp: float = 0.5                                        # fraction of training over which blends reach 1
    stripped: dict[str, str] = field(default_factory=dict)  # blends merge_blocks has already removed


_TYPED = {"sparsity": SparsityRecord, "linearize": LinearizeRecord}


@dataclass
class Analysis:
    channel_groups: dict | None = None
    channel_pruning: dict | None = None
    sparsity: SparsityRecord | None = None
    linearize: LinearizeRecord | None = None
    distillation: dict | None = None
    prune_while_training: dict | None = None

    @property
    def sparse_weights(self) -> list[str]:
        """The weights a sparsify pass recorded ([] when none)."""
        return list(self.sparsity.weights) if self.sparsity is not None else []

    @property
    def pending_blends(self) -> dict[str, str]:
        return dict(self.linearize.blends) if self.linearize is not None else {}

    def to_json(self) -> dict[str, Any]:
        return {name: dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
                for name, value in ((f.name, getattr(self, f.name)) for f in dataclasses.fields(self))
                if value is not None}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Analysis:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(str(key) for key in data if key not in known)
        if unknown:
            raise AnalysisRecordError(f"unknown analysis record '{printable(unknown[0])[:40]}' "
                                      f"(known: {', '.join(sorted(known))})")
        values = {}
        for name, value in data.items():
            if value is None:
                continue
            if not isinstance(value, dict):
                raise AnalysisRecordError(f"analysis record '{name}' must be a JSON object")
            values[name] = _typed(name, value) if name in _TYPED else value
        return cls(**values)


def _typed(name: str, value: dict):
    record_class = _TYPED[name]
    fields = {f.name for f in dataclasses.fields(record_class)}
    if not set(value) <= fields:
        extra = sorted(set(value) - fields)[0]
        raise AnalysisRecordError(f"analysis record '{name}' has unknown field '{printable(str(extra))[:40]}'")
    try:
        record = record_class(**value)
    except TypeError as error:  # a required field missing
        raise AnalysisRecordError(f"analysis record '{name}' is incomplete: {error}") from None
    return record
