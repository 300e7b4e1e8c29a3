"""The Analysis record's contract: every field is typed, written by a pass that declares it and read by a
pass that declares it; a record saved by an older prunefx (with the fields it has retired) still loads."""

from __future__ import annotations

import dataclasses
import json
import logging

import pytest

from prunefx.graph.analysis_record import RETIRED, Analysis, AnalysisRecordError, LinearizeRecord
from prunefx.passes.core.registry import get_pass, registered_passes

FIELDS = [f.name for f in dataclasses.fields(Analysis)]


def _declared(side: str) -> dict[str, list[str]]:
    """field -> the shipped passes whose contract declares it on `side` ('reads' or 'writes')."""
    found: dict[str, list[str]] = {name: [] for name in FIELDS}
    for name in registered_passes():
        for field in getattr(get_pass(name).contract, side):
            found[field].append(name)
    return found


@pytest.mark.parametrize("field", FIELDS)
def test_every_field_has_a_declared_writer_and_a_declared_reader(field):
    """A field nothing writes is dead weight; one nothing reads is a channel to nowhere."""
    assert _declared("writes")[field], f"no pass declares that it writes {field!r}"
    assert _declared("reads")[field], f"no pass declares that it reads {field!r}"


def test_every_field_is_a_typed_record_that_round_trips():
    record = Analysis()
    for f in dataclasses.fields(Analysis):
        kind = f.type.split(" | ")[0] if isinstance(f.type, str) else f.type
        assert kind.endswith("Record"), f"{f.name} is not a typed record ({f.type})"
    record.linearize = LinearizeRecord(blends={"blend_0": "layer1"})
    assert Analysis.from_json(json.loads(json.dumps(record.to_json()))) == record


def test_retired_fields_are_not_fields_and_are_dropped_on_load(caplog):
    assert not set(RETIRED) & set(FIELDS)
    old = {"channel_groups": {"groups": []}, "channel_pruning": {"macs_after": 1}, "distillation": {"steps": 60},
           "prune_while_training": {"events": []}, "linearize": {"blends": {"b": "layer1"}}}
    with caplog.at_level(logging.INFO, logger="prunefx.graph.analysis_record"):
        loaded = Analysis.from_json(old)
    assert loaded == Analysis(linearize=LinearizeRecord(blends={"b": "layer1"}))
    assert "channel_groups, channel_pruning, distillation, prune_while_training" in caplog.text
    with pytest.raises(AnalysisRecordError, match="unknown analysis record 'colour'"):
        Analysis.from_json({"colour": {}})  # a field no version wrote is still refused



@pytest.mark.parametrize("name, value, says", [
    ("sparsity", {"pattern": 7, "criterion": None, "weights": 5}, "pattern and criterion must be strings"),
    ("sparsity", {"pattern": "2:4", "criterion": "obs", "weights": ["w"], "layers": ["x"]}, "layers a list of objects"),
    ("linearize", {"blends": "notamapping", "ramp": "half"}, "blends and stripped must map names"),
    ("linearize", {"blends": {"b": "layer1"}, "ramp": 3}, "ramp be a number from 0 to 1"),
])
def test_a_sparsity_or_linearize_record_of_the_wrong_form_is_refused_on_load(name, value, says):
    """Only their field names were checked: `inspect` read such a file, and the pass that read the record failed
    inside ('object of type int has no len()', "'GraphModule' object has no attribute 'n'")."""
    with pytest.raises(AnalysisRecordError, match=says):
        Analysis.from_json({name: value})
    good = {"sparsity": {"pattern": "2:4", "criterion": "magnitude", "weights": ["conv.weight"],
                         "layers": [{"weight": "conv.weight"}], "skipped": []},
            "linearize": {"blends": {"blend_0": "layer1"}, "ramp": 0.5, "stripped": {}}}[name]
    assert dataclasses.asdict(getattr(Analysis.from_json({name: good}), name)) == good
