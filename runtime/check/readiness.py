"""Engine readiness without a GPU: read an ONNX file and say, one finding per line with the node's name, what
would stop or slow an engine build on a target (runtime/check/targets.py: trt10, trt11, orin, ort).

The rules (runtime/check/rules.py) are functions of the graph alone; `check_model` returns the findings and
`exit_status` is 1 when any is an error. A graph that is not a valid DAG is refused before any rule runs.
The rules and how the file is read: see docs/tensorrt.md, '`prunefx check`'.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import onnx

from prunefx.graph.errors import PrunefxError, printable
from prunefx.graph.safety.regular_files import read_regular_file
from prunefx.runtime.check.findings import SEVERITIES, Finding
from prunefx.runtime.check.graph_index import GraphIndex
from prunefx.runtime.check.onnxruntime_load import load_findings
from prunefx.runtime.check.rules import run_rules
from prunefx.runtime.check.targets import TARGETS, Target
from prunefx.runtime.onnx.external import inline_external_data


@dataclass(frozen=True)
class Readiness:
    file: str
    target: str
    description: str
    source: str
    findings: tuple[Finding, ...]

    def count(self, severity: str) -> int:
        return sum(finding.severity == severity for finding in self.findings)

    @property
    def ok(self) -> bool:
        return self.count("error") == 0

    def as_dict(self) -> dict:
        return {"file": self.file, "target": self.target, "description": self.description, "source": self.source,
                "errors": self.count("error"), "warnings": self.count("warning"), "infos": self.count("info"),
                "findings": [asdict(finding) for finding in self.findings]}

    def summary(self) -> str:
        return (f"{self.file}: {self.target} ({self.description}): {self.count('error')} errors, "
                f"{self.count('warning')} warnings, {self.count('info')} notes")


def target_of(name: str) -> Target:
    if name not in TARGETS:
        raise PrunefxError(f"unknown target {name!r}: choose one of {', '.join(TARGETS)}")
    return TARGETS[name]


# protobuf refuses messages over 2 GiB: larger models keep their weights as external data.
MAX_ONNX_BYTES = 2 << 30


def load_onnx(path: str | os.PathLike) -> onnx.ModelProto:
    """The ONNX model at `path` with its external data read in, or a one-line PrunefxError for a missing,
    unreadable, non-ONNX or malformed file (see the module docstring)."""
    path = Path(path)
    data = read_regular_file(path, "ONNX file", MAX_ONNX_BYTES)
    try:
        model = onnx.load_model_from_string(data)
    except Exception as error:  # protobuf's DecodeError and friends: the file is not an ONNX model
        raise PrunefxError(f"{printable(str(path))} is not a readable ONNX file ({type(error).__name__})") from None
    if not model.graph.node:
        raise PrunefxError(f"{printable(str(path))} holds no ONNX graph (no nodes)")
    check_graph(model.graph, printable(str(path)))
    return inline_external_data(model, path)


def check_graph(graph: onnx.GraphProto, name: str) -> None:
    """Refuse a node without outputs, and a graph whose nodes read each other in a cycle (the rules walk
    producers and consumers; a cycle would make them loop). Linear: one pass in the file's order, then the
    nodes left after every readable value was produced are the cycle's."""
    for node in graph.node:
        if not any(node.output):
            raise PrunefxError(f"{name}: node '{printable(node.name)[:60]}' ({printable(node.op_type)[:40]}) has "
                               "no outputs")
    produced_by = {output: index for index, node in enumerate(graph.node) for output in node.output if output}
    _refuse_undefined_values(graph, name, produced_by)
    waiting = [sum(1 for value in node.input if value in produced_by) for node in graph.node]
    readers: dict[int, list[int]] = {}
    for index, node in enumerate(graph.node):
        for value in node.input:
            if value in produced_by:
                readers.setdefault(produced_by[value], []).append(index)
    ready = [index for index, count in enumerate(waiting) if count == 0]
    done = 0
    while ready:
        index = ready.pop()
        done += 1
        for reader in readers.get(index, ()):
            waiting[reader] -= 1
            if waiting[reader] == 0:
                ready.append(reader)
    if done < len(graph.node):
        stuck = next(graph.node[i] for i, count in enumerate(waiting) if count > 0)
        raise PrunefxError(f"{name}: the graph has a cycle through node '{printable(stuck.name)[:60]}' "
                           f"({printable(stuck.op_type)[:40]}); an ONNX graph must be acyclic")


def _refuse_undefined_values(graph: onnx.GraphProto, name: str, produced_by: dict[str, int]) -> None:
    """A value a node reads, or the graph returns, that no node, graph input or initializer gives: no runtime loads
    such a graph (an empty name is an optional input left out)."""
    given = set(produced_by) | {value.name for value in graph.input} | {tensor.name for tensor in graph.initializer} \
        | {tensor.values.name for tensor in graph.sparse_initializer}
    for node in graph.node:
        missing = next((value for value in node.input if value and value not in given), None)
        if missing is not None:
            raise PrunefxError(f"{name}: node '{printable(node.name)[:60]}' ({printable(node.op_type)[:40]}) reads "
                               f"'{printable(missing)[:60]}', which no node, graph input or initializer gives")
    for output in graph.output:
        if output.name not in given:
            raise PrunefxError(f"{name}: graph output '{printable(output.name)[:60]}' is given by no node, graph input "
                               "or initializer")


def check_model(model: onnx.ModelProto, target: str, *, name: str = "model.onnx", index=None,
                load: bool = False) -> Readiness:
    """Every finding of every rule for `target` on `model`, errors first. `index`: the model's GraphIndex
    (runtime/check/graph_index.py) when one is at hand, shared between targets so that the weights are decoded once.
    `load`: on `ort`, also load the model in ONNX Runtime (runtime/check/onnxruntime_load.py); the files prunefx
    writes were loaded already, by their parity check."""
    chosen = target_of(target)
    findings = run_rules(index or GraphIndex(model), chosen)
    if load and not chosen.tensorrt:
        findings += load_findings(model)
    findings.sort(key=lambda finding: SEVERITIES.index(finding.severity))
    return Readiness(file=name, target=chosen.name, description=chosen.description, source=chosen.source,
                     findings=tuple(findings))


def check_file(path: str | os.PathLike, target: str) -> Readiness:
    return check_model(load_onnx(path), target, name=str(path), load=True)


def report_entry(path: str | os.PathLike, target: str) -> dict:
    """What `prune`, `quantize` and `compress` put in report.json for a file they wrote: the counts and every
    error and warning (notes are left to `prunefx check`)."""
    return report_entries(path, (target,))[target]


def report_entries(path: str | os.PathLike, targets: tuple[str, ...]) -> dict[str, dict]:
    """report_entry for each of `targets`, the file read once (its weights are most of it)."""
    model = load_onnx(path)
    index = GraphIndex(model)
    entries = {}
    for target in targets:
        readiness = check_model(model, target, name=str(path), index=index).as_dict()
        readiness["file"] = Path(path).name
        readiness["findings"] = [finding for finding in readiness["findings"] if finding["severity"] != "info"]
        entries[target] = readiness
    return entries
