"""The compress flow, shared by `prunefx compress` and `prunefx demo`: a dense Program captured at the
training batch size, a recipe and a data set in; a compressed, deployable model and a measured report out.

    dense accuracy (test and val)  ->  the recipe's Pipeline, with data injected  ->  accuracy after
    ->  MACs and parameters per image  ->  both programs cut to batch 1 (graph/rebatch.py)
    ->  ONNX export, torch-vs-ONNX-Runtime parity, ONNX Runtime latency dense vs compressed, side by side
    ->  OUTPUT/model.pt2 (batch 1), model_train.pt2 (training batch), model.onnx, report.json, report.md,
        accuracy_latency.png (every measured variant: runtime/deployment_report.py)

Data injection. A recipe is YAML and cannot hold loaders or models, so the passes that need them get
them here (`INJECTED`, the one place that says which pass gets what). A key the recipe sets itself is
left alone: `eval_data: null` turns evaluation during training off, `teacher: null` makes a training
pass distil from its own input instead of the dense model.

    distill, prune_while_training   data       the training batches (shuffled, augmented)
                                    eval_data  the validation batches (None without a validation split)
                                    teacher    the dense program: a frozen, eval-mode copy
    remove_channels                 calibration  a few training input batches (inputs only), when
                                                 its importance reads data (taylor, fisher: gradients;
                                                 obs: layer inputs) or it compensates the remaining
                                                 weights (compensate)
    recalibrate_batchnorm           data       the same few training input batches
    sparsify_nm                     calibration  the same batches with their labels (criterion obs or cap)
    linearize_blocks                calibration  the same few training input batches (block choice,
                                                 statistics of the batch norms that replace layer norms)
    merge_blocks                    measure    ONNX Runtime timing at batch 1 (runtime/speedup.py): a merge
                                               of layers is kept only when it runs faster

Recipes named on the command line (`--recipe NAME`) are the YAML files shipped in prunefx/recipes/;
anything else is read as a path.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from prunefx.data import FASHION_MNIST, DataSplits, load_data
from prunefx.graph import Program, count
from prunefx.graph.channel_importance import DATA_CRITERIA
from prunefx.graph.errors import PrunefxError
from prunefx.graph.rebatch import rebatch
from prunefx.loading import program_from_reference
from prunefx.models import build_model
from prunefx.passes.pipeline import Pipeline, Step
from prunefx.passes.recipe import RecipeError, pipeline_from_spec, read_recipe
from prunefx.passes.training import evaluate
from prunefx.runtime import (
    DEFAULT_THREADS,
    check_parity,
    compare_latency,
    export_onnx,
    onnx_runner,
    onnx_speedup,
)
from prunefx.runtime.deployment_report import (
    CHART_FILE,
    Variant,
    deployment_markdown,
    variants_from_compress,
    write_chart,
)

RECIPES_DIR = Path(__file__).resolve().parent / "recipes"
CALIBRATION_BATCHES = 4
MERGE_MEASURE_RUNS = 30  # per merge of layers that merge_blocks considers: batch 1, ONNX Runtime
LATENCY_WARMUP = 10

# pass name -> {config key: what `prunefx compress` puts there}. See the module docstring.
INJECTED: dict[str, dict[str, str]] = {
    "distill": {"data": "train", "eval_data": "val", "teacher": "teacher"},
    "prune_while_training": {"data": "train", "eval_data": "val", "teacher": "teacher"},
    "remove_channels": {"calibration": "calibration"},  # only when it reads data: see _injected_keys
    "recalibrate_batchnorm": {"data": "calibration"},
    "sparsify_nm": {"calibration": "labelled_calibration"},  # obs and cap read data; cap needs the labels
    "linearize_blocks": {"calibration": "calibration"},  # block choice by damage, layer-norm statistics
    "merge_blocks": {"measure": "measure"},  # a merge of layers must run faster on ONNX Runtime
}


def _injected_keys(step: Step) -> dict[str, str]:
    """The keys `step` gets injected (those its recipe config does not set)."""
    table = INJECTED.get(step.name, {})
    if (step.name == "remove_channels" and step.config.get("importance") not in DATA_CRITERIA
            and not step.config.get("compensate")):
        return {}  # magnitude criteria without compensation read no data
    if step.name == "sparsify_nm" and step.config.get("criterion", "magnitude") == "magnitude":
        return {}
    return {key: source for key, source in table.items() if key not in step.config}


# ---- recipes ------------------------------------------------------------------------------------

def shipped_recipes() -> list[str]:
    return sorted(path.stem for path in RECIPES_DIR.glob("*.yaml"))


@dataclass(frozen=True)
class Recipe:
    name: str
    path: Path
    spec: dict
    pipeline: Pipeline


def recipe_path(text: str) -> Path:
    """A shipped recipe's file for NAME (or NAME.yaml); otherwise `text` as a path."""
    name = text.removesuffix(".yaml")
    shipped = RECIPES_DIR / f"{name}.yaml"
    if "/" not in text and os.sep not in text and shipped.is_file():
        return shipped
    path = Path(text).expanduser()
    if path.is_file():
        return path
    raise RecipeError(f"unknown recipe {text!r}: no such file, and not a shipped recipe "
                      f"(shipped: {', '.join(shipped_recipes())})")


def load_named_recipe(text: str) -> Recipe:
    """Read and check a recipe (its passes must exist) before anything expensive runs."""
    path = recipe_path(text)
    spec = read_recipe(path)
    try:
        pipeline = pipeline_from_spec(spec)
    except PrunefxError as error:
        raise RecipeError(f"recipe {path}: {error}") from error
    name = spec.get("name") if isinstance(spec.get("name"), str) else path.stem
    return Recipe(name=name, path=path, spec=spec, pipeline=pipeline)


# ---- model and data -----------------------------------------------------------------------------

def _rgb(reference: str) -> bool:
    shape = build_model(reference).default_input_shape
    return shape is not None and len(shape) == 4 and shape[1] == 3


def load_model_and_data(reference: str, data: str, *, batch_size: int, weights: str | None = None,
                        validation: int = 5000) -> tuple[Program, DataSplits]:
    """The data set's loaders at `batch_size`, and the model captured (or loaded) for input shape
    (batch_size, *the data's image shape). Fashion-MNIST is gray; for a model that takes RGB its
    channel is repeated three times."""
    saved = program_from_reference(reference, weights=weights) if reference.endswith(".pt2") else None
    options = {}
    if str(data) == FASHION_MNIST:
        rgb = saved.example_inputs[0].shape[1] == 3 if saved is not None else _rgb(reference)
        options = {"validation": validation, "channels": 3 if rgb else 1}
    splits = load_data(data, batch_size, **options)
    shape = (batch_size, *splits.input_shape)
    text = "x".join(map(str, shape))
    if saved is not None:
        captured = tuple(saved.example_inputs[0].shape)
        if captured != shape:
            hint = f"; give --batch-size {captured[0]}" if captured[1:] == shape[1:] else ""
            raise PrunefxError(f"{reference} was captured for input shape {'x'.join(map(str, captured))}, but "
                               f"{data} at batch size {batch_size} gives {text}{hint}")
        program = saved
    else:
        program = program_from_reference(reference, weights=weights, input_shape=text)
    _check_classes(program, splits, data)
    return program.eval(), splits


def _check_classes(program: Program, splits: DataSplits, data: str) -> None:
    shapes = program.output_shapes
    if shapes and len(shapes[0]) >= 2 and shapes[0][1] != splits.num_classes:
        raise PrunefxError(f"{program.name} outputs {shapes[0][1]} classes but {data} has {splits.num_classes}")


class FirstBatches:
    """The first `limit` batches of a loader (all of them when `limit` is None), re-iterable."""

    def __init__(self, loader: Iterable, limit: int | None):
        self.loader, self.limit = loader, limit

    def __len__(self) -> int:
        return len(self.loader) if self.limit is None else min(len(self.loader), self.limit)

    def __iter__(self):
        return iter(self.loader) if self.limit is None else itertools.islice(iter(self.loader), self.limit)


# ---- injection ----------------------------------------------------------------------------------

def _sources(dense: Program, splits: DataSplits, eval_batches: int | None, needed: set[str]) -> dict:
    sources = {"train": splits.train,
               "val": FirstBatches(splits.val, eval_batches) if splits.val is not None else None}
    if "teacher" in needed:
        teacher = dense.clone().eval()
        for parameter in teacher.module.parameters():
            parameter.requires_grad_(False)
        sources["teacher"] = teacher
    if "calibration" in needed:
        loader = splits.train if splits.train is not None else splits.evaluation
        sources["calibration"] = [(inputs,) for inputs, _ in itertools.islice(iter(loader), CALIBRATION_BATCHES)]
    if "labelled_calibration" in needed:
        loader = splits.train if splits.train is not None else splits.evaluation
        sources["labelled_calibration"] = list(itertools.islice(iter(loader), CALIBRATION_BATCHES))
    if "measure" in needed:
        sources["measure"] = onnx_speedup(threads=DEFAULT_THREADS, runs=MERGE_MEASURE_RUNS)
    return sources


def inject(pipeline: Pipeline, dense: Program, splits: DataSplits, *, data: str,
           eval_batches: int | None = None) -> tuple[Pipeline, list[list[str]]]:
    """The pipeline with data, teacher and calibration batches in the configs of the passes that need
    them (INJECTED), and, per step, the keys that were injected."""
    wanted = [_injected_keys(step) for step in pipeline.steps]
    for step, keys in zip(pipeline.steps, wanted):
        if splits.train is None and "train" in keys.values():
            raise PrunefxError(f"recipe pass '{step.name}' trains, but {data} has no training split "
                               f"(use fashion-mnist or a folder with train/ and val/)")
    sources = _sources(dense, splits, eval_batches, {source for keys in wanted for source in keys.values()})
    steps = [Step(step.function, {**{key: sources[source] for key, source in keys.items()}, **step.config})
             for step, keys in zip(pipeline.steps, wanted)]
    return Pipeline(steps, verify=pipeline.verify, progress=pipeline.progress), [sorted(keys) for keys in wanted]


# ---- the flow -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Options:
    threads: int = 2           # ONNX Runtime threads for the latency measurement
    runs: int = 50             # timed runs per model
    warmup: int = LATENCY_WARMUP
    eval_batches: int | None = None  # evaluate on the first N batches of test and val only
    opset: int = 18


def _accuracy(program: Program, splits: DataSplits, eval_batches: int | None) -> dict:
    return {name: (evaluate(program, FirstBatches(loader, eval_batches)) if loader is not None else None)
            for name, loader in (("test", splits.test), ("val", splits.val))}


def _percent(result: dict | None) -> str:
    return "n/a" if result is None else f"{100 * result['accuracy']:.2f} % ({result['count']} images)"


def compress(dense: Program, recipe: Recipe, splits: DataSplits, output: str | os.PathLike, *, data: str,
             options: Options = Options(), log: Callable[[str], None] = print) -> dict:
    """Run `recipe` on `dense` (captured at the training batch size, eval mode) and write OUTPUT/;
    return the report (also in OUTPUT/report.json and report.md)."""
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise PrunefxError(f"{output} exists and is not a folder")
    started = time.perf_counter()
    seconds: dict[str, float] = {}
    dense = dense.eval()
    batch = int(dense.example_inputs[0].shape[0])
    expected = (batch, *splits.input_shape)
    if tuple(dense.example_inputs[0].shape) != expected:
        raise PrunefxError(f"{dense.name} takes input shape {tuple(dense.example_inputs[0].shape)}, the data "
                           f"gives {expected}")
    dense_one = rebatch(dense, 1)  # fails now, not after training, if the graph cannot be cut to batch 1
    pipeline, injected = inject(recipe.pipeline, dense, splits, data=data, eval_batches=options.eval_batches)

    clock = time.perf_counter()
    before = _accuracy(dense, splits, options.eval_batches)
    seconds["evaluate_dense"] = time.perf_counter() - clock
    log(f"[dense] {dense.name}: test {_percent(before['test'])}, val {_percent(before['val'])}")

    log(f"[compress] recipe {recipe.name}: {' -> '.join(pipeline.names)}")
    clock = time.perf_counter()
    result = pipeline.run(dense)
    seconds["pipeline"] = time.perf_counter() - clock
    for (name, step), keys in zip(result.steps, injected):
        log(f"[{name}] {_pass_summary(step.stats)}" + (f" (given {', '.join(keys)})" if keys else ""))
    compressed = result.program.eval()
    output.mkdir(parents=True, exist_ok=True)
    compressed.save(output / "model_train.pt2")  # before anything else can fail: the training is kept

    clock = time.perf_counter()
    after = _accuracy(compressed, splits, options.eval_batches)
    seconds["evaluate_compressed"] = time.perf_counter() - clock
    log(f"[compressed] test {_percent(after['test'])}, val {_percent(after['val'])}")

    clock = time.perf_counter()
    compressed_one = rebatch(compressed, 1)
    compressed_one.save(output / "model.pt2")
    exported = export_onnx(compressed_one, output / "model.onnx", opset=options.opset)
    parity = check_parity(compressed_one, exported.path)
    seconds["export"] = time.perf_counter() - clock
    cost_before, cost_after = count(dense_one), count(compressed_one)

    clock = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="prunefx-compress-") as tmp:
        dense_onnx = export_onnx(dense_one, Path(tmp) / "dense.onnx", opset=options.opset).path
        latency = compare_latency(onnx_runner(dense_onnx, dense_one.example_inputs, threads=options.threads),
                                  onnx_runner(exported.path, compressed_one.example_inputs, threads=options.threads),
                                  warmup=options.warmup, runs=options.runs, threads=options.threads)
    seconds["latency"] = time.perf_counter() - clock
    seconds["total"] = time.perf_counter() - started

    report = {
        "model": dense.name, "data": str(data), "batch_size": batch, "input_shape": list(splits.input_shape),
        "recipe": {"name": recipe.name, "path": str(recipe.path), "spec": json_safe(recipe.spec)},
        "eval_batches": options.eval_batches,
        "accuracy": {"before": before, "after": after},
        "macs_before": cost_before.macs, "macs_after": cost_after.macs,
        "params_before": cost_before.params, "params_after": cost_after.params,
        "latency": {"backend": "onnxruntime", "batch_size": 1, "threads": options.threads, "runs": options.runs,
                    "warmup": options.warmup, "dense_ms": latency.a.median_ms,
                    "compressed_ms": latency.b.median_ms, "speedup": latency.speedup,
                    "dense": latency.a.to_dict(), "compressed": latency.b.to_dict()},
        "speedup": latency.speedup,
        "parity": {"max_abs_error": parity.max_abs_error, "output_scale": parity.output_scale,
                   "relative": parity.relative},
        "onnx": {"exporter": exported.exporter, "fallback_reason": exported.fallback_reason,
                 "nodes": exported.node_count},
        "passes": [{"pass": name, "modified": step.modified, "injected": keys, "stats": json_safe(step.stats)}
                   for (name, step), keys in zip(result.steps, injected)],
        "files": {name: str(output / name) for name in
                  ("model.pt2", "model_train.pt2", "model.onnx", "report.json", "report.md", CHART_FILE)},
        "seconds": seconds,
    }
    report = json_safe(report)
    variants = variants_from_compress(report)
    report["variants"] = [variant.to_dict() for variant in variants]
    write_chart(variants, output / CHART_FILE, title=f"{dense.name}, recipe {recipe.name}")
    (output / "report.json").write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
    (output / "report.md").write_text(markdown_report(report))
    return report


def _pass_summary(stats: Mapping) -> str:
    """One line per pass for the console: what it did, from the statistics it returned."""
    parts = []
    if "macs_before" in stats and "macs_after" in stats:
        parts.append(f"MACs {stats['macs_after'] / max(stats['macs_before'], 1):.3f} of its input")
    if "events" in stats:
        parts.append(f"{len(stats['events'])} pruning events")
    training = stats.get("training", stats)
    if "steps_run" in training:
        parts.append(f"{training['steps_run']} training steps, loss {training['train_loss']:.4f} "
                     f"(task {training['task_loss']:.4f}, KD {training['kd_loss']:.4f})")
        if training.get("eval"):
            parts.append(f"val {100 * training['eval'][-1]['accuracy']:.2f} %")
        parts.append(f"{training['seconds']:.0f} s")
    if "folded" in stats:
        parts.append(f"folded {stats['folded']}")
    if "pattern" in stats and "zero_fraction" in stats:  # sparsify_nm
        parts.append(f"{stats['pattern']} ({stats['criterion']}) on {len(stats['weights'])} layers, "
                     f"{100 * stats['zero_fraction']:.1f} % of their weights zero")
    return ", ".join(parts) or "done"


# ---- reports ------------------------------------------------------------------------------------

def json_safe(value):
    """Statistics as plain JSON: tensors and arrays as lists (large ones as their shape), NaN and
    infinities as null, paths and anything else unknown as text."""
    if isinstance(value, Mapping):
        return {str(key): json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [json_safe(item) for item in value]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, (np.generic,)):
        return json_safe(value.item())
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (torch.Tensor, np.ndarray)):
        array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else value
        return json_safe(array.tolist()) if array.size <= 64 else f"array of shape {list(array.shape)}"
    if isinstance(value, Program):
        return f"Program {value.name}"
    if callable(value):
        return getattr(value, "__name__", type(value).__name__)
    return str(value)


def _threads(count: int) -> str:
    return f"{count} thread" + ("s" if count != 1 else "")


def _ratio(after: float, before: float) -> str:
    return f"{after / before:.3f}x" if before else "n/a"


def _accuracy_cell(result: dict | None) -> str:
    return "n/a" if result is None else f"{100 * result['accuracy']:.2f} %"


def _accuracy_change(before: dict | None, after: dict | None) -> str:
    if before is None or after is None:
        return ""
    return f"{100 * (after['accuracy'] - before['accuracy']):+.2f} pt"


def summary_rows(report: dict) -> list[tuple[str, str, str, str]]:
    """(what, dense, compressed, change) rows: the same table on the console and in report.md."""
    accuracy, latency = report["accuracy"], report["latency"]
    rows = [(f"{split} accuracy", _accuracy_cell(accuracy["before"][split]), _accuracy_cell(accuracy["after"][split]),
             _accuracy_change(accuracy["before"][split], accuracy["after"][split]))
            for split in ("test", "val") if accuracy["before"][split] is not None]
    rows += [
        ("MACs per image", f"{report['macs_before'] / 1e6:.2f} M", f"{report['macs_after'] / 1e6:.2f} M",
         _ratio(report["macs_after"], report["macs_before"])),
        ("parameters", f"{report['params_before'] / 1e6:.3f} M", f"{report['params_after'] / 1e6:.3f} M",
         _ratio(report["params_after"], report["params_before"])),
        (f"ONNX Runtime latency (batch 1, {_threads(latency['threads'])}, median)", f"{latency['dense_ms']:.3f} ms",
         f"{latency['compressed_ms']:.3f} ms", f"{latency['speedup']:.2f}x faster"),
    ]
    return rows


def console_summary(report: dict) -> str:
    rows = [("", "dense", "compressed", ""), *summary_rows(report)]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(width) if i == 0 else cell.rjust(width)
                       for i, (cell, width) in enumerate(zip(row, widths))).rstrip() for row in rows]
    lines.append(f"speed-up measured alternately in one process, {report['latency']['runs']} runs each; parity torch "
                 f"vs ONNX Runtime: relative error {report['parity']['relative']:.1e}")
    return "\n".join(lines)


def markdown_report(report: dict) -> str:
    lines = [f"# {report['model']} compressed with recipe {report['recipe']['name']}", "",
             f"Data: {report['data']} (batch {report['batch_size']}, images {'x'.join(map(str, report['input_shape']))})"
             + (f", evaluated on the first {report['eval_batches']} batches of each split" if report["eval_batches"]
                else "") + ".", "",
             "| | dense | compressed | change |", "|---|---|---|---|"]
    lines += [f"| {what} | {dense} | {compressed} | {change} |" for what, dense, compressed, change in summary_rows(report)]
    latency = report["latency"]
    lines += ["", f"Latency: ONNX Runtime, batch 1, {_threads(latency['threads'])}, {latency['warmup']} warm-up and "
                  f"{latency['runs']} timed runs per model, measured alternately in one process; speed-up = ratio of "
                  f"medians. Parity of model.onnx against torch: max abs error {report['parity']['max_abs_error']:.2e} "
                  f"(relative {report['parity']['relative']:.2e}).", "", "## Passes", ""]
    for number, step in enumerate(report["passes"], 1):
        given = f" (given {', '.join(step['injected'])} by prunefx compress)" if step["injected"] else ""
        lines.append(f"{number}. `{step['pass']}`{given}: {_pass_summary(step['stats'])}")
    seconds = report["seconds"]
    lines += ["", "## Files", "",
              "- `model.pt2`: the compressed program at batch 1 (deploy, `prunefx bench`, `prunefx export`)",
              f"- `model_train.pt2`: the compressed program at batch {report['batch_size']} (resume fine-tuning: "
              "`prunefx compress model_train.pt2 --recipe finetune ...`)",
              "- `model.onnx`: the compressed model at batch 1, cleaned and checked",
              "- `report.json`: everything here, and every pass's statistics", "",
              f"Took {seconds['total']:.0f} s ({seconds['pipeline']:.0f} s in the recipe's passes).", ""]
    if report.get("variants"):
        lines.append(deployment_markdown([Variant.from_dict(item) for item in report["variants"]], CHART_FILE))
    return "\n".join(lines)

