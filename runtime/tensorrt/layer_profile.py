"""Per-layer TensorRT profiles, mapped back to ONNX nodes and Program nodes, with "ran sparse" per layer.

A TensorRT layer is matched to the ONNX nodes it came from (the engine inspector's metadata first, its name
as the fallback: fused, pointwise and Myelin layers name their nodes), and an ONNX node to the Program nodes
it computes through the exporter's provenance (runtime/onnx/provenance.py), never guessed. "Ran sparse"
comes from the layer's tactic name. Times come from an IProfiler (runtime/tensorrt/engine.Engine) or
trtexec's `--exportProfile`. The naming forms: see docs/tensorrt.md, 'Per-layer profiles'.
"""

from __future__ import annotations

import json
import os
import re
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from prunefx.graph import Program
from prunefx.graph.whole_files import file_path, write_whole
from prunefx.runtime.measure.gpu_latency import WARM_SECONDS, WarmUp, warm_until_steady
from prunefx.runtime.onnx.provenance import map_to_program, onnx_node_origins

_ONNX_LAYER = re.compile(r"\[ONNX Layer: ([^\]]+)\]")
_FOREIGN = re.compile(r"ForeignNode\[(.+?)\.\.\.(.+?)\]")
_TOKEN_SEPARATORS = re.compile(r"[\s+,(){}\[\]\x1e\x1f]+")


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


# Where the inspector's JSON names an output's type: one "Format/Datatype" field to TensorRT 10; 11 split it in two
_TYPE_FIELDS = ("Format/Datatype", "DataType", "Datatype", "Format")


def _precision(layer: Mapping) -> str:
    outputs = layer.get("Outputs") or [{}]
    text = " ".join(str(outputs[0].get(key, "")) for key in _TYPE_FIELDS) if isinstance(outputs[0], Mapping) else ""
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


def profile_engine(engine, *, warmup: int = 10, runs: int = 50, warm_seconds: float = WARM_SECONDS) -> LayerTimes:
    """Per-layer times of `engine` (runtime/tensorrt/engine.Engine) over `runs` profiled runs, after a warm-up of at
    least `warmup` runs that lasts until the engine's times settle (a GPU's clocks are down after idle seconds, and
    every layer would read slow), as the cuda backend's node profile warms up."""
    warm_until_steady([engine.time_once], WarmUp(warmup=warmup, seconds=warm_seconds))
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


SPARSE_SOURCES = ("tensorrt", "trtexec")  # the profiles that say whether a layer ran a 2:4 sparse kernel


def format_profile_table(profile: LayerProfile, *, limit: int | None = None) -> str:
    """A fixed-width table, slowest layers first; the sparse column where the profile can tell (TensorRT's)."""
    rows = sorted(profile.rows, key=lambda row: row.median_ms, reverse=True)[:limit]
    tells_sparse = profile.source in SPARSE_SOURCES
    sparse_column = f" {'sparse':<6}" if tells_sparse else ""
    lines = [f"{'layer':<48} {'type':<16} {'prec':<5} {'ms':>9} {'share':>6}{sparse_column} program nodes / scope"]
    for row in rows:
        where = ("reformat for " if row.reformat else "") + (", ".join(row.program_nodes) or ", ".join(row.scopes) or "-")
        sparse = f" {'yes' if row.ran_sparse else 'no':<6}" if tells_sparse else ""
        lines.append(f"{_shorten(row.layer, 48):<48} {_shorten(row.layer_type, 16):<16} {row.precision:<5} "
                     f"{row.median_ms:9.4f} {100 * row.share:5.1f}%{sparse} {_shorten(where, 60)}")
    ran_sparse = f"; {sum(row.ran_sparse for row in profile.rows)} ran sparse kernels" if tells_sparse else ""
    lines.append(f"{len(profile.rows)} layers, {profile.total_ms:.4f} ms summed (median of {profile.runs} runs, "
                 f"{profile.source}){ran_sparse}")
    return "\n".join(lines + [f"note: {note}" for note in profile.notes])


def write_profile_json(profile: LayerProfile, path: str | os.PathLike, about: dict | None = None) -> Path:
    """The profile as JSON at `path`, after `about` (what was profiled, and how: model, backend, precision, inputs)."""
    path = file_path(path)
    write_whole(path, json.dumps({**(about or {}), **profile.to_dict()}, indent=2) + "\n")
    return path
