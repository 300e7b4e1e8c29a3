"""Per-layer TensorRT profiles, mapped back to ONNX nodes and Program nodes, with "ran sparse" per layer.

Three names meet here:

1. A TensorRT layer is named after the ONNX node(s) it came from: `node_relu_1`, fused layers
   `node_Conv_309 + node_relu_1`, pointwise fusions `PWN(node_Mul_5, node_Add_7)`, Myelin regions
   `{ForeignNode[node_layer_norm...node_linear_7]}` (every ONNX node from the first to the last, in the
   file's order), reformats `Reformatting CopyNode for Input Tensor 0 to node_Conv_309`. With detailed
   profiling verbosity the engine inspector also lists the ONNX nodes in each layer's `Metadata`
   (`[ONNX Layer: node_x]`, separated by \\x1e): that is used first, the name is the fallback.
2. An ONNX node written by runtime/onnx_export.py keeps the dynamo exporter's provenance: its module
   scope and the fx node it came from (`pkg.torch.onnx.name_scopes`, e.g. ['', 'layer1', 'layer1.0',
   'layer1.0.bn1', '_native_batch_norm_legit_no_training_1']), and the rewrite rules that made it
   (`FuseBatchNormIntoConv`). Nodes the optimiser creates are named `node_Conv_309`, so the name alone
   is not enough. TorchScript-exported files have no provenance; their names (`/layer1/layer1.0/conv1/Conv`)
   still give the module scope.
3. The exporter saw a decomposed copy of the Program (`batch_norm_1` became
   `_native_batch_norm_legit_no_training_1`, `relu__1` became `relu_1`), so fx names are matched to
   Program nodes within their module scope (nn_module_stack): the same name, else the only call in
   that scope, else the k-th call of the same operator in that scope. A conv with a batch norm folded
   in also maps to the conv node that fed the norm. What cannot be matched stays unmapped: never guessed.

"Ran sparse" comes from the engine inspector: a layer ran a sparse tensor-core kernel when its tactic
name says so (`sm80_xmma_fprop_sparse_conv_...`, `..._sptensor...`); `HasSparseWeights` is reported as
`sparse_weights` (the layer's weights were eligible). Times come from an IProfiler attached to the
execution context (runtime/tensorrt_engine.Engine) or from trtexec's `--exportProfile` file.
"""

from __future__ import annotations

import ast
import json
import os
import re
import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import onnx

from prunefx.graph import Program

_ONNX_LAYER = re.compile(r"\[ONNX Layer: ([^\]]+)\]")
_FOREIGN = re.compile(r"ForeignNode\[(.+?)\.\.\.(.+?)\]")
_TOKEN_SEPARATORS = re.compile(r"[\s+,(){}\[\]\x1e\x1f]+")
_SUFFIX = re.compile(r"_\d+$")
_BATCH_NORM_FUSION = "FuseBatchNormInto"


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
    scopes = props.get("pkg.torch.onnx.name_scopes")
    if scopes:
        entries = ast.literal_eval(scopes)
        return OnnxNodeOrigin(node.name, node.op_type, entries[-2] if len(entries) >= 2 else "", entries[-1], rules)
    return OnnxNodeOrigin(node.name, node.op_type, _torchscript_scope(node.name), None, rules)


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


# ---- TensorRT layer -> ONNX nodes ---------------------------------------------------------------

def onnx_nodes_of_layer(layer_name: str, onnx_order: Sequence[str], metadata: str | None = None) -> list[str]:
    """The ONNX nodes a TensorRT layer computes, in file order: from the inspector's metadata when it
    names any, else from the layer name (fusions, PWN(...), ForeignNode ranges)."""
    position = {name: index for index, name in enumerate(onnx_order)}
    found = [name for name in _ONNX_LAYER.findall(metadata or "") if name in position]
    if not found:
        for first, last in _FOREIGN.findall(layer_name):
            if first in position and last in position:
                found += onnx_order[position[first]:position[last] + 1]
        found += [token for token in _TOKEN_SEPARATORS.split(layer_name) if token in position]
    return sorted(set(found), key=position.__getitem__)


# ---- the engine inspector's layer information ---------------------------------------------------

@dataclass(frozen=True)
class EngineLayer:
    name: str
    layer_type: str = ""
    tactic: str = ""
    metadata: str = ""
    precision: str = ""
    sparse_weights: bool = False

    @property
    def ran_sparse(self) -> bool:
        tactic = self.tactic.lower()
        return "sparse" in tactic or "sptensor" in tactic

    @property
    def reformat(self) -> bool:
        return self.layer_type == "Reformat" or self.name.startswith("Reformatting")


def _precision(layer: Mapping) -> str:
    outputs = layer.get("Outputs") or [{}]
    text = str(outputs[0].get("Format/Datatype", "")) if isinstance(outputs[0], Mapping) else ""
    for marker, precision in (("Int8", "INT8"), ("Half", "FP16"), ("FP16", "FP16"), ("Float", "FP32"),
                              ("FP32", "FP32")):
        if marker in text:
            return precision
    return ""


def parse_engine_information(text: str | Mapping) -> list[EngineLayer]:
    """Layers of `IEngineInspector.get_engine_information(JSON)` or trtexec's --exportLayerInfo file.
    An engine built without detailed verbosity lists names only; then only names are known."""
    data = json.loads(text) if isinstance(text, str) else text
    layers = []
    for layer in data.get("Layers", []):
        if isinstance(layer, str):
            layers.append(EngineLayer(name=layer))
            continue
        layers.append(EngineLayer(name=layer.get("Name", ""), layer_type=str(layer.get("LayerType", "")),
                                  tactic=str(layer.get("TacticName", "")), metadata=str(layer.get("Metadata", "")),
                                  precision=_precision(layer), sparse_weights=bool(layer.get("HasSparseWeights", 0))))
    return layers


# ---- layer times --------------------------------------------------------------------------------

class LayerTimes:
    """Milliseconds per layer over several runs, in the order layers first reported."""

    def __init__(self):
        self.samples: dict[str, list[float]] = {}

    def add(self, layer_name: str, ms: float) -> None:
        self.samples.setdefault(layer_name, []).append(float(ms))

    def medians(self) -> dict[str, float]:
        return {name: statistics.median(values) for name, values in self.samples.items()}

    @property
    def runs(self) -> int:
        return max((len(values) for values in self.samples.values()), default=0)


def tensorrt_profiler(trt, times: LayerTimes):
    """An IProfiler that feeds `times` (its base class exists only once tensorrt is imported)."""

    class Profiler(trt.IProfiler):
        def __init__(self):
            trt.IProfiler.__init__(self)

        def report_layer_time(self, layer_name, ms):
            times.add(layer_name, ms)

    return Profiler()


def profile_engine(engine, *, warmup: int = 10, runs: int = 50) -> LayerTimes:
    """Per-layer times of `engine` (runtime/tensorrt_engine.Engine) over `runs` profiled runs."""
    for _ in range(warmup):
        engine()
    times = LayerTimes()
    engine.profiler = tensorrt_profiler(engine.trt, times)  # kept on the engine: the context holds a raw pointer
    engine.context.profiler = engine.profiler
    for _ in range(runs):
        engine()
    return times


# ---- the profile --------------------------------------------------------------------------------

@dataclass(frozen=True)
class LayerRow:
    layer: str
    median_ms: float
    share: float                       # of the summed layer times
    layer_type: str = ""
    precision: str = ""
    ran_sparse: bool = False
    sparse_weights: bool = False
    tactic: str = ""
    onnx_nodes: tuple[str, ...] = ()
    program_nodes: tuple[str, ...] = ()
    scopes: tuple[str, ...] = ()       # module paths, known even without the Program
    reformat: bool = False             # a layout/precision copy feeding (or fed by) the nodes listed


@dataclass
class LayerProfile:
    rows: list[LayerRow]
    runs: int
    source: str                        # 'tensorrt' (IProfiler) or 'trtexec' (--exportProfile)
    notes: list[str] = field(default_factory=list)

    @property
    def total_ms(self) -> float:
        return sum(row.median_ms for row in self.rows)

    def to_dict(self) -> dict:
        return {"source": self.source, "runs": self.runs, "total_ms": self.total_ms, "notes": self.notes,
                "layers": [asdict(row) for row in self.rows]}


def build_layer_profile(times: Mapping[str, float], layers: Iterable[EngineLayer], onnx_path: str | os.PathLike,
                        program: Program | None = None, *, runs: int = 0, source: str = "tensorrt") -> LayerProfile:
    """One row per timed layer (median ms), joined with its inspector information and mapped to ONNX nodes,
    module scopes and, given the Program the file was exported from, Program nodes."""
    info = {layer.name: layer for layer in layers}
    origins = onnx_node_origins(onnx_path)
    order = [origin.name for origin in origins]
    by_name = {origin.name: origin for origin in origins}
    to_program = map_to_program(origins, program) if program is not None else {}
    total = sum(times.values()) or 1.0
    rows = []
    for name, ms in times.items():
        layer = info.get(name, EngineLayer(name=name))
        nodes = onnx_nodes_of_layer(name, order, layer.metadata)
        program_nodes = tuple(dict.fromkeys(p for node in nodes for p in to_program.get(node, ())))
        scopes = tuple(dict.fromkeys(by_name[node].scope for node in nodes if by_name[node].scope))
        rows.append(LayerRow(layer=name, median_ms=ms, share=ms / total, layer_type=layer.layer_type,
                             precision=layer.precision, ran_sparse=layer.ran_sparse, sparse_weights=layer.sparse_weights,
                             tactic=layer.tactic, onnx_nodes=tuple(nodes), program_nodes=program_nodes, scopes=scopes,
                             reformat=layer.reformat or name.startswith("Reformatting")))
    notes = [] if any(layer.tactic for layer in info.values()) else [
        "no tactic names: the engine was built without detailed profiling verbosity, so 'sparse' is unknown"]
    return LayerProfile(rows=rows, runs=runs, source=source, notes=notes)


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 3] + "..."


def format_profile_table(profile: LayerProfile, *, limit: int | None = None) -> str:
    """A fixed-width table, slowest layers first."""
    rows = sorted(profile.rows, key=lambda row: row.median_ms, reverse=True)[:limit]
    lines = [f"{'layer':<48} {'type':<16} {'prec':<5} {'ms':>9} {'share':>6} {'sparse':<6} program nodes / scope"]
    for row in rows:
        where = ("reformat for " if row.reformat else "") + (", ".join(row.program_nodes) or ", ".join(row.scopes) or "-")
        lines.append(f"{_shorten(row.layer, 48):<48} {_shorten(row.layer_type, 16):<16} {row.precision:<5} "
                     f"{row.median_ms:9.4f} {100 * row.share:5.1f}% {'yes' if row.ran_sparse else 'no':<6} "
                     f"{_shorten(where, 60)}")
    sparse = sum(row.ran_sparse for row in profile.rows)
    lines.append(f"{len(profile.rows)} layers, {profile.total_ms:.4f} ms summed (median of {profile.runs} runs, "
                 f"{profile.source}); {sparse} ran sparse kernels")
    return "\n".join(lines + [f"note: {note}" for note in profile.notes])


def write_profile_json(profile: LayerProfile, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.write_text(json.dumps(profile.to_dict(), indent=2) + "\n")
    return path
