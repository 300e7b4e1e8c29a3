"""Where each node of an exported ONNX file came from, and which Program nodes it computes.

The dynamo exporter keeps each node's module scope and fx node; since it saw a decomposed copy of the
Program, fx names are matched to Program nodes within their module scope, and what cannot be matched stays
unmapped, never guessed. TorchScript files give the module scope through their names only. See
docs/tensorrt.md, 'Per-layer profiles'.
"""

from __future__ import annotations

import ast
import os
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import onnx

from prunefx.graph import Program

_SUFFIX = re.compile(r"_\d+$")
_BATCH_NORM_FUSION = "FuseBatchNormInto"
MAX_SCOPES_CHARS = 100_000  # a scope path of a few hundred modules; literal_eval of more only costs memory


# ---- ONNX node provenance -----------------------------------------------------------------------

@dataclass(frozen=True)
class OnnxNodeOrigin:
    """Where an ONNX node came from: `scope` is the dotted module path ('' top level, None unknown),
    `fx_name` the node of the graph the exporter saw (None for TorchScript exports)."""

    name: str
    op_type: str
    scope: str | None
    fx_name: str | None
    rules: tuple[str, ...] = ()


def _torchscript_scope(name: str) -> str | None:
    """'/layer1/layer1.0/conv1/Conv' -> 'layer1.0.conv1' (components are full paths or attribute names)."""
    if not name.startswith("/"):
        return None
    path = ""
    for part in name.strip("/").split("/")[:-1]:
        path = part if not path or part.startswith(path + ".") else f"{path}.{part}"
    return path


def _origin(node: onnx.NodeProto) -> OnnxNodeOrigin:
    props = {entry.key: entry.value for entry in node.metadata_props}
    rules = tuple(rule.strip() for rule in props.get("pkg.onnxscript.rewriter.rule_name", "").split(",") if rule.strip())
    entries = _name_scopes(props.get("pkg.torch.onnx.name_scopes", ""))
    if entries:
        return OnnxNodeOrigin(node.name, node.op_type, entries[-2] if len(entries) >= 2 else "", entries[-1], rules)
    return OnnxNodeOrigin(node.name, node.op_type, _torchscript_scope(node.name), None, rules)


def _name_scopes(text: str) -> list[str]:
    """The exporter's list of scope names, e.g. "['', 'layer1', 'relu_1']"; [] for anything else. The text
    comes from the file: it is parsed as a literal only (never evaluated), bounded in length, and must be
    a list of strings."""
    if not text or len(text) > MAX_SCOPES_CHARS:
        return []
    try:
        entries = ast.literal_eval(text)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return []
    if not isinstance(entries, list) or not all(isinstance(entry, str) for entry in entries):
        return []
    return entries


def onnx_node_origins(model: onnx.ModelProto | str | os.PathLike) -> list[OnnxNodeOrigin]:
    """Every node of an ONNX file (or model), in the file's order, with its provenance."""
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model), load_external_data=False)
    return [_origin(node) for node in model.graph.node]


# ---- ONNX node -> Program nodes -----------------------------------------------------------------

def _scope_of(node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    return list(stack.values())[-1][0] if stack else ""


def _base(name: str) -> str:
    """Operator part of an fx name: 'relu__1' -> 'relu', 'relu_1' -> 'relu', 'add_' -> 'add'."""
    return _SUFFIX.sub("", name).strip("_")


def _suffix_number(name: str) -> int:
    found = _SUFFIX.search(name)
    return int(found.group()[1:]) if found else 0


def map_to_program(origins: Sequence[OnnxNodeOrigin], program: Program) -> dict[str, tuple[str, ...]]:
    """ONNX node name -> names of the Program nodes it computes (empty when it cannot be told)."""
    calls = [node for node in program.graph.nodes if node.op == "call_function"]
    in_scope: dict[str, list] = defaultdict(list)
    for node in calls:
        in_scope[_scope_of(node)].append(node)
    ordinal = _fx_ordinals(origins)
    mapping = {}
    for origin in origins:
        nodes = _match(origin, in_scope.get(origin.scope, []) if origin.scope is not None else [], ordinal)
        if nodes and any(_BATCH_NORM_FUSION in rule for rule in origin.rules):
            producer = nodes[0].args[0] if nodes[0].args else None
            if getattr(producer, "op", None) == "call_function":
                nodes = [producer, *nodes]
        mapping[origin.name] = tuple(node.name for node in nodes)
    return mapping


def _fx_ordinals(origins: Sequence[OnnxNodeOrigin]) -> dict[tuple[str, str], int]:
    """(scope, fx name) -> its rank among the exporter's nodes of the same operator in that scope."""
    names: dict[tuple[str, str], set[str]] = defaultdict(set)
    for origin in origins:
        if origin.fx_name is not None and origin.scope is not None:
            names[(origin.scope, _base(origin.fx_name))].add(origin.fx_name)
    return {(scope, name): rank for (scope, _), group in names.items()
            for rank, name in enumerate(sorted(group, key=_suffix_number))}


def _match(origin: OnnxNodeOrigin, candidates: list, ordinal: Mapping[tuple[str, str], int]) -> list:
    if origin.fx_name is None:
        return list(candidates)  # TorchScript file: module granularity
    same_name = [node for node in candidates if node.name == origin.fx_name]
    if same_name:
        return same_name
    if len(candidates) == 1:
        return list(candidates)
    same_operator = [node for node in candidates if _base(node.name) == _base(origin.fx_name)]
    rank = ordinal.get((origin.scope, origin.fx_name))
    return [same_operator[rank]] if rank is not None and rank < len(same_operator) else []
