"""The `prunefx.json` record inside a saved Program, checked field by field on load.

A `.pt2` may come from anyone, so its record is input, not trusted state: every field has a type, shapes
are lists of positive integers with a bounded element count (an input is allocated from them), the name
is printable text (it reaches terminals), and the stored input and output shapes must agree with the
graph itself. Any deviation is a ProgramFileError naming the file and the field.
"""

from __future__ import annotations

import json
import keyword
import math

import torch

from prunefx.graph.errors import ProgramFileError, first_line, printable
from prunefx.graph.normalisation_bounds import MEAN_RANGE, STD_RANGE

FORMAT_VERSION = 1
MAX_NAME_LENGTH = 200
# Elements of one example input. 2**28 float32 values are 1 GiB, well beyond any vision input at batch 1
# (a 4k RGB frame is 2**25), and small enough to allocate on a development machine.
MAX_INPUT_ELEMENTS = 1 << 28
INPUT_DTYPES = {"float32", "float16", "bfloat16", "float64", "int64", "int32", "int16", "int8", "uint8", "bool"}
_KEYS = {"format", "name", "inputs", "output_shapes", "analysis", "nodes", "normalisation"}
MAX_NODES = 1 << 20  # operator nodes whose names a file records: ViT-g has about 3,000
# Integer and boolean example inputs (masks, indices) are stored whole up to this many elements: zeros or a draw
# could make a degenerate call (every key masked) where the caller's values did not. Larger ones load as zeros.
MAX_STORED_VALUES = 1 << 16


def parse_metadata(text: str, where: str) -> dict:
    """The record as a dict with checked fields; `{}` when the archive has none (plain torch.export.save)."""
    if not text:
        return {}
    try:
        record = json.loads(text)
    except (ValueError, RecursionError) as error:
        raise ProgramFileError(f"{where}: its prunefx.json is not valid JSON ({first_line(error)})") from error
    if not isinstance(record, dict):
        raise ProgramFileError(f"{where}: its prunefx.json is not a JSON object")
    unknown = sorted(set(record) - _KEYS)
    if unknown:
        raise ProgramFileError(f"{where}: its prunefx.json has unknown field '{printable(unknown[0])[:40]}'")
    if record.get("format", FORMAT_VERSION) != FORMAT_VERSION:
        raise ProgramFileError(f"{where}: prunefx.json format {printable(str(record['format']))[:20]} is not "
                               f"the one this prunefx reads ({FORMAT_VERSION})")
    checked = {"format": FORMAT_VERSION}
    if "name" in record:
        checked["name"] = _name(record["name"], where)
    if "inputs" in record:
        checked["inputs"] = _inputs(record["inputs"], where)
    if "output_shapes" in record:
        checked["output_shapes"] = [_shape(s, f"{where}: output_shapes[{i}]")
                                    for i, s in enumerate(_list(record["output_shapes"], f"{where}: output_shapes"))]
    if "nodes" in record:
        checked["nodes"] = _nodes(record["nodes"], where)
    if "normalisation" in record:
        checked["normalisation"] = _normalisation(record["normalisation"], f"{where}: prunefx.json field "
                                                  "'normalisation'")
    if "analysis" in record:
        if not isinstance(record["analysis"], dict):
            raise ProgramFileError(f"{where}: prunefx.json field 'analysis' must be a JSON object, "
                                   f"not {type(record['analysis']).__name__}")
        checked["analysis"] = record["analysis"]
    return checked


def check_against_graph(record: dict, exported: torch.export.ExportedProgram, where: str) -> None:
    """The stored input shapes must be the graph's placeholders' shapes, and likewise for the outputs."""
    graph_inputs = [tuple(node.meta["val"].shape) for node in exported.graph.nodes
                    if node.op == "placeholder" and node.name in exported.graph_signature.user_inputs
                    and isinstance(node.meta.get("val"), torch.Tensor)]
    if "inputs" in record:
        stored = [tuple(spec["shape"]) for spec in record["inputs"]]
        if stored != graph_inputs:
            raise ProgramFileError(f"{where}: prunefx.json says the inputs are {stored}, the graph takes {graph_inputs}")
    if "output_shapes" in record:
        graph_outputs = _graph_output_shapes(exported)
        stored = [tuple(shape) for shape in record["output_shapes"]]
        if graph_outputs is not None and stored != graph_outputs:
            raise ProgramFileError(f"{where}: prunefx.json says the outputs are {stored}, "
                                   f"the graph gives {graph_outputs}")


def _graph_output_shapes(exported) -> list[tuple[int, ...]] | None:
    output = next(node for node in reversed(exported.graph.nodes) if node.op == "output")
    user_outputs = set(exported.graph_signature.user_outputs)
    values = [arg.meta.get("val") for arg in torch.utils._pytree.tree_leaves(output.args[0])
              if isinstance(arg, torch.fx.Node) and arg.name in user_outputs]
    if not all(isinstance(v, torch.Tensor) for v in values):
        return None  # non-tensor outputs: nothing to compare the stored shapes with
    return [tuple(int(s) for s in v.shape) for v in values]


def program_name(value) -> str | None:
    """A Program's name as it is kept, saved and read back: stripped, control characters escaped, at most
    MAX_NAME_LENGTH characters; None for no name (not text, or blank)."""
    if not isinstance(value, str) or not value.strip():
        return None
    return printable(value.strip())[:MAX_NAME_LENGTH].rstrip()  # a cut may end on a space, which a reload strips


def statistics_problem(mean: tuple[float, ...], std: tuple[float, ...]) -> str | None:
    """Why `mean` and `std` are not the statistics a model's images (pixels scaled to [0, 1]) can be normalised
    with, in words; None where they are: 1 or 3 values each, as many of both, within MEAN_RANGE and STD_RANGE
    (NaN and infinities are outside). prunefx/data/normalise.py holds the command line's to the same rule."""
    if len(mean) not in (1, 3) or len(std) != len(mean):
        return f"mean and std take 1 or 3 values each, as many of both, not {len(mean)} and {len(std)}"
    if not (all(MEAN_RANGE[0] <= v <= MEAN_RANGE[1] for v in mean)
            and all(STD_RANGE[0] <= v <= STD_RANGE[1] for v in std)):
        return (f"each mean must lie in [{MEAN_RANGE[0]:g}, {MEAN_RANGE[1]:g}] and each std in [{STD_RANGE[0]:g}, "
                f"{STD_RANGE[1]:g}] (pixels scaled to [0, 1]), not mean {list(mean)} and std {list(std)}")
    return None


def normalisation_record(statistics: tuple[tuple[float, ...], tuple[float, ...]]) -> dict[str, list[float]]:
    """(mean, std) as prunefx.json, `prunefx inspect --json` and compress's report.json write them."""
    mean, std = statistics
    return {"mean": list(mean), "std": list(std)}


def _normalisation(value, where: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """A record of normalisation_record's form, checked by statistics_problem, as (mean, std)."""
    if not isinstance(value, dict) or set(value) != {"mean", "std"}:
        raise ProgramFileError(f"{where} must be an object with 'mean' and 'std'")
    mean, std = value["mean"], value["std"]
    if not (isinstance(mean, list) and isinstance(std, list)
            and all(type(v) in (int, float) for v in mean + std)):
        raise ProgramFileError(f"{where}: mean and std must be lists of numbers, not {printable(json.dumps(value))[:80]}")
    problem = statistics_problem(tuple(mean), tuple(std))
    if problem is not None:
        raise ProgramFileError(f"{where}: {problem}")
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def _name(value, where: str) -> str:
    name = program_name(value)
    if name is None:
        raise ProgramFileError(f"{where}: prunefx.json field 'name' must be non-empty text")
    return name


def _inputs(value, where: str) -> list[dict]:
    specs = _list(value, f"{where}: inputs")
    checked = []
    for index, spec in enumerate(specs):
        here = f"{where}: inputs[{index}]"
        if not isinstance(spec, dict) or set(spec) - {"values"} != {"shape", "dtype"}:
            raise ProgramFileError(f"{here} must be an object with 'shape' and 'dtype' (and 'values')")
        if spec["dtype"] not in INPUT_DTYPES:
            raise ProgramFileError(f"{here}: dtype '{printable(str(spec['dtype']))[:20]}' is not one of "
                                   f"{', '.join(sorted(INPUT_DTYPES))}")
        shape = _shape(spec["shape"], here)
        if math.prod(shape) > MAX_INPUT_ELEMENTS:
            raise ProgramFileError(f"{here}: shape {'x'.join(map(str, shape))} has more than 2**28 elements "
                                   "(refused: it could not be allocated)")
        checked.append({"shape": shape, "dtype": spec["dtype"]})
        if "values" in spec:
            checked[-1]["values"] = _values(spec["values"], spec["dtype"], math.prod(shape), here)
    return checked


def input_record(tensor: torch.Tensor) -> dict:
    """An example input as the record keeps it: its shape and dtype, and an integer or boolean one's values
    where it has at most MAX_STORED_VALUES elements."""
    record = {"shape": list(tensor.shape), "dtype": str(tensor.dtype).removeprefix("torch.")}
    if not tensor.dtype.is_floating_point and not tensor.dtype.is_complex and tensor.numel() <= MAX_STORED_VALUES:
        record["values"] = tensor.detach().cpu().reshape(-1).to(torch.int64).tolist()
    return record


def _values(value, dtype: str, count: int, where: str) -> list[int]:
    """Stored values: `count` integers that `dtype` holds (0 and 1 for bool)."""
    if dtype not in INPUT_DTYPES or getattr(torch, dtype).is_floating_point:
        raise ProgramFileError(f"{where}: values are stored for integer and boolean inputs only, not {dtype}")
    low, high = (0, 1) if dtype == "bool" else (torch.iinfo(getattr(torch, dtype)).min,
                                                 torch.iinfo(getattr(torch, dtype)).max)
    if (not isinstance(value, list) or len(value) != count or count > MAX_STORED_VALUES
            or not all(type(v) is int and low <= v <= high for v in value)):
        raise ProgramFileError(f"{where}: 'values' must be a list of the input's {count} elements, integers in "
                               f"[{low}, {high}]")
    return value


def _nodes(value, where: str) -> list[list[str]]:
    """[name, operator] pairs: names become Python identifiers in the module's generated code."""
    if not isinstance(value, list) or len(value) > MAX_NODES:
        raise ProgramFileError(f"{where}: prunefx.json field 'nodes' must be a list of at most {MAX_NODES} entries")
    for index, entry in enumerate(value):
        if not (isinstance(entry, list) and len(entry) == 2 and all(isinstance(part, str) for part in entry)
                and entry[0].isidentifier() and not keyword.iskeyword(entry[0]) and len(entry[0]) <= 1000
                and len(entry[1]) <= 200):
            raise ProgramFileError(f"{where}: prunefx.json nodes[{index}] must be [name, operator], the name a "
                                   f"Python identifier, not {printable(json.dumps(entry))[:60]}")
    return value


def _list(value, where: str) -> list:
    if not isinstance(value, list) or len(value) > 64:
        raise ProgramFileError(f"{where} must be a list (of at most 64 entries)")
    return value


def _shape(value, where: str) -> list[int]:
    if (not isinstance(value, list) or len(value) > 8
            or not all(type(s) is int and 0 <= s < 1 << 31 for s in value)):
        raise ProgramFileError(f"{where}: a shape is a list of at most 8 non-negative integers, "
                               f"not {printable(json.dumps(value))[:60]}")
    return value
