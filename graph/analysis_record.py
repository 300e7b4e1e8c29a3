"""What passes hand to later passes: one typed record per Program, saved with it (prunefx.json).

Passes communicate through these fields and nothing else, each with a writer and a reader declared in the
passes' contracts (`@graph_pass(reads=..., writes=...)`, checked by tests/test_analysis_record.py):
`sparsity` (sparsify_nm -> distill: zeros kept at zero; remove_channels, prune_while_training, merge_blocks:
refused, their rewrites would move the zeros off the pattern), `linearize`
(linearize_blocks, depth_to_budget, choose_for_budget -> distill, prune_while_training, linearize_blocks,
merge_blocks), `kept_channels` (remove_channels -> remove_channels, which composes it, and the write-back,
which cuts the dead branches the Program dropped as the live tensors were cut) and `training` (distill,
prune_while_training -> the next of them: the epoch its data starts at). A pass's report and facts are its
Result's, not fields here. Retired fields of older files load and are dropped (RETIRED, logged); an unknown
field or one of the wrong type is refused on load.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any

from prunefx.graph.errors import PrunefxError, printable

log = logging.getLogger(__name__)

# Fields older versions wrote and nothing read: dropped when a saved record is loaded (see above).
RETIRED = ("channel_groups", "channel_pruning", "distillation", "prune_while_training")


class AnalysisRecordError(PrunefxError):
    """A saved analysis record that does not have the documented form."""


@dataclass
class SparsityRecord:
    pattern: str                       # "2:4", "N:M" or "unstructured"
    criterion: str                     # magnitude | obs | cap
    weights: list[str]                 # tensor names whose zeros must stay zero
    layers: list[dict] = field(default_factory=list)
    skipped: list = field(default_factory=list)

    def __post_init__(self) -> None:  # read from a file: a wrong type failed later, inside the pass that read it
        if not (isinstance(self.pattern, str) and isinstance(self.criterion, str) and _strings(self.weights)
                and isinstance(self.layers, list) and all(isinstance(layer, dict) for layer in self.layers)
                and isinstance(self.skipped, list)):
            raise AnalysisRecordError("analysis record 'sparsity': pattern and criterion must be strings, weights "
                                      "a list of tensor names, layers a list of objects and skipped a list")


@dataclass
class LinearizeRecord:
    blends: dict[str, str] = field(default_factory=dict)    # blend buffer -> block name, pending
    ramp: float = 0.5                                        # fraction of training over which blends reach 1
    stripped: dict[str, str] = field(default_factory=dict)  # blends merge_blocks has already removed

    def __post_init__(self) -> None:
        if not (_names_to_names(self.blends) and _names_to_names(self.stripped)
                and type(self.ramp) in (int, float) and 0 <= self.ramp <= 1):
            raise AnalysisRecordError("analysis record 'linearize': blends and stripped must map names to block "
                                      "names, ramp be a number from 0 to 1")


def _strings(value) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def _names_to_names(value) -> bool:
    return isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())


@dataclass
class KeptChannelsRecord:
    """Which of the captured widths' channels each sliced tensor keeps (graph/channels/kept_channels.py)."""
    masks: list[str] = field(default_factory=list)                  # keep masks, 'width:hex', each once
    tensors: dict[str, dict[str, int]] = field(default_factory=dict)  # tensor -> {dim: index into masks}

    def __post_init__(self) -> None:  # read from a file: the form checked here, the masks where decoded
        if not (isinstance(self.masks, list) and all(isinstance(mask, str) for mask in self.masks)):
            raise AnalysisRecordError("analysis record 'kept_channels': masks must be a list of strings")
        if not (isinstance(self.tensors, dict) and all(
                isinstance(name, str) and isinstance(dims, dict) and all(
                    isinstance(dim, str) and dim.isdigit() and type(index) is int and 0 <= index < len(self.masks)
                    for dim, index in dims.items()) for name, dims in self.tensors.items())):
            raise AnalysisRecordError("analysis record 'kept_channels': tensors must map names to {dim: mask index}")


@dataclass
class TrainingRecord:
    """How far the Program's training passes went through their data: the next one starts at the epoch after,
    so that each draws its own order and augmentation rather than the first epoch's again."""
    epochs: int = 0

    def __post_init__(self) -> None:
        if type(self.epochs) is not int or self.epochs < 0:
            raise AnalysisRecordError("analysis record 'training': epochs must be a whole number >= 0")


_TYPED = {"sparsity": SparsityRecord, "linearize": LinearizeRecord, "kept_channels": KeptChannelsRecord,
          "training": TrainingRecord}  # every field of Analysis, by name


@dataclass
class Analysis:
    sparsity: SparsityRecord | None = None
    linearize: LinearizeRecord | None = None
    kept_channels: KeptChannelsRecord | None = None
    training: TrainingRecord | None = None

    @property
    def sparse_weights(self) -> list[str]:
        """The weights a sparsify pass recorded ([] when none)."""
        return list(self.sparsity.weights) if self.sparsity is not None else []

    @property
    def pending_blends(self) -> dict[str, str]:
        return dict(self.linearize.blends) if self.linearize is not None else {}

    def to_json(self) -> dict[str, Any]:
        return {f.name: dataclasses.asdict(getattr(self, f.name)) for f in dataclasses.fields(self)
                if getattr(self, f.name) is not None}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Analysis:
        retired = sorted(str(key) for key in data if key in RETIRED)
        if retired:
            log.info("dropped the analysis records of an older prunefx that nothing reads: %s", ", ".join(retired))
            data = {key: value for key, value in data.items() if key not in RETIRED}
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
            values[name] = _typed(name, value)
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
