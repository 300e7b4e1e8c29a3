"""The compress flow, shared by `prunefx compress` and `prunefx demo`: a dense Program captured at the
training batch size, a recipe and a data set in; a compressed, deployable model and a measured report out.

Dense accuracy, the recipe's Pipeline with data injected (prunefx/injection.py), accuracy after, costs per
image, both programs cut to batch 1 (graph/rebatch.py), ONNX export, parity and the latency side by side where
the budget is measured (prunefx/delivered_latency.py: ONNX Runtime by default); then OUTPUT/model.pt2,
model_train.pt2, model.onnx, report.json, report.md and accuracy_latency.png.
Recipe names resolve in prunefx/named_recipes.py. See docs/reference/recipes.md.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import NoReturn

from prunefx.compress_inputs import require_float32_training
from prunefx.compress_options import DEFAULTS, Options
from prunefx.data.splits import (
    CLASSIFICATION,
    DataSplits,
)
from prunefx.deliverable import write_model
from prunefx.delivered_latency import delivered_latency, stage_latency
from prunefx.dense_tasks import evaluate_dense
from prunefx.device import current_gpu, on_device, resolve_device
from prunefx.graph import Program
from prunefx.graph.errors import PrunefxError
from prunefx.graph.held_signals import signals_held
from prunefx.graph.launch import torchrun_launch
from prunefx.graph.placement import move_program
from prunefx.graph.program_metadata import normalisation_record
from prunefx.graph.rebatch import rebatch
from prunefx.graph.whole_files import cut_name, hidden_stem
from prunefx.image_statistics import statistics_read
from prunefx.injection import (
    CALIBRATION_BATCHES,
    FirstBatches,
    MeasurerRelease,
    calibrated_on,
    calibration_split,
    inject,
    injected_keys,
)
from prunefx.named_recipes import Recipe
from prunefx.output import staged_folder
from prunefx.output_paths import MAX_NAME_BYTES, check_output_folder
from prunefx.passes.core.result import Result
from prunefx.passes.training.engine import evaluate
from prunefx.reports import report_json
from prunefx.reports.budget import BUDGET_CHART_FILE, write_budget_chart
from prunefx.reports.compression import json_safe, markdown_report, pass_summary
from prunefx.reports.report_facts import Costs, ReportFacts
from prunefx.reports.report_json import output_files
from prunefx.reports.stage import StageMeter
from prunefx.runtime.measure.deployment_report import CHART_FILE, variants_from_compress, write_chart
from prunefx.runtime.measure.speedup import closed_after


def _score(program: Program, loader, splits: DataSplits) -> dict:
    """The data's task score: top-1 accuracy, or for dense tasks mIoU / mAP (prunefx/dense_tasks.py),
    kept under "accuracy" too so that every report reads one headline number."""
    if splits.task == CLASSIFICATION:
        shapes = program.output_shapes  # a segmenter on unlabelled images: scored per pixel (data/unlabelled.py)
        per_pixel = bool(shapes) and len(shapes[0]) == 4
        return {**evaluate(program, loader), **({"metric": "pixel accuracy"} if per_pixel else {})}
    return evaluate_dense(program, loader, task=splits.task, num_classes=splits.num_classes)


def _accuracy_on(program: Program, loader, splits: DataSplits, eval_batches: int | None) -> dict | None:
    return _score(program, FirstBatches(loader, eval_batches), splits) if loader is not None else None


def _accuracy(program: Program, splits: DataSplits, eval_batches: int | None, device: str | None, *,
              test: dict | None = None) -> dict:
    """Test and validation scores, computed on `device` as the recipe's passes are (and the stage rows); `test`,
    where given, is the program's test score already computed there (by the last stage row)."""
    with on_device(program, device):
        return {"test": test or _accuracy_on(program, splits.test, splits, eval_batches),
                "val": _accuracy_on(program, splits.val, splits, eval_batches)}


def _percent(result: dict | None) -> str:
    if result is None:
        return "n/a"
    metric = result.get("metric")  # dense tasks name their score; classification's is plain accuracy
    counted = "pixels" if metric in ("mIoU", "pixel accuracy") else "images"
    return f"{metric + ' ' if metric else ''}{100 * result['accuracy']:.2f} % ({result['count']} {counted})"


def compress(dense: Program, recipe: Recipe, splits: DataSplits, output: str | os.PathLike, *, data: str,
             options: Options = DEFAULTS, log: Callable[[str], None] = print) -> dict:
    """Run `recipe` on `dense` (captured at the training batch size, run in eval mode and left in the modes it
    came in) and write OUTPUT/; return the report (also in OUTPUT/report.json and report.md)."""
    require_one_process()
    require_float32_training(dense)
    output = check_output_folder(output)
    with dense.evaluating():
        return _compress(dense, recipe, splits, output, data=data, options=options, log=log)


def require_one_process() -> None:
    """compress refuses a torchrun launch, in one line: its model is captured at one static batch, and each
    process would have trained on a share of it, and scored, timed and written the output beside the others."""
    launch = torchrun_launch()
    if launch.distributed:
        raise PrunefxError(f"compress does not run under torchrun ({launch.world_size} processes): the model is "
                           "captured at one static batch, of which each process would train on a share; prune in "
                           "one process, then train across GPUs with passes.distill or a Trainer from Python")


def _compress(dense: Program, recipe: Recipe, splits: DataSplits, output: Path, *, data: str, options: Options,
              log: Callable[[str], None]) -> dict:
    started = time.perf_counter()
    seconds: dict[str, float] = {}
    batch = int(dense.example_inputs[0].shape[0])
    expected = (batch, *splits.input_shape)
    if tuple(dense.example_inputs[0].shape) != expected:
        raise PrunefxError(f"{dense.name} takes input shape {tuple(dense.example_inputs[0].shape)}, the data "
                           f"gives {expected}")
    if options.batch > batch:  # refused now: the latency is timed on models cut from the training batch
        raise PrunefxError(f"the latency is measured at batch {options.batch}, larger than the training batch "
                           f"{batch} the model is captured at: give a training batch of at least {options.batch} "
                           "(--batch-size)")
    dense_one = rebatch(dense, 1)  # fails now, not after training, if the graph cannot be cut to batch 1
    pipeline, injected = inject(recipe.pipeline, dense, splits, data=data, eval_batches=options.eval_batches,
                                options=options)
    if calibrated_on(recipe.pipeline, splits) == "test":  # the only images there are: the score is not held out
        log(f"note: {data} has no training or validation split, so calibration reads the test images it is "
            "then scored on")

    clock = time.perf_counter()
    before = _accuracy(dense, splits, options.eval_batches, options.device)
    seconds["evaluate_dense"] = time.perf_counter() - clock
    log(f"[dense] {dense.name}: test {_percent(before['test'])}, val {_percent(before['val'])}")

    log(f"[compress] recipe {recipe.name}: {' -> '.join(pipeline.names)}")
    clock = time.perf_counter()
    meter = (StageMeter(dense, lambda program: _accuracy_on(program, splits.test, splits, options.eval_batches),
                        latency=stage_latency(options), log=log)
             if options.stage_reports else None)
    release = MeasurerRelease(pipeline)
    trains = iter(["train" in injected_keys(step).values() for step in recipe.pipeline.steps])
    trained: list[Program] = []  # a copy of the last training pass's model, kept if a later pass fails

    def after_step(name: str, step: Result) -> None:
        if meter is not None:
            meter(name, step)
        release.after_step()  # a budget pass's measurer: its files and GPU models go once no later pass reads it
        if next(trains):
            trained[:] = [move_program(step.program.clone(), "cpu")]

    # the dense model (also the teacher) goes back even on failure; the stage rows' models leave the GPU
    try:
        with on_device(dense, options.device) as placed, closed_after(meter), closed_after(release):
            result = pipeline.run(dense, after_step=after_step)
            placed.home(result.program)  # measured and written from the CPU
    except BaseException as error:  # a pass after the training failed, or Ctrl-C: the training is kept
        if not trained:
            raise
        _raise_keeping(error, _keep_program(trained[0], output), log)
    seconds["pipeline"] = time.perf_counter() - clock
    for (name, step), keys in zip(result.steps, injected):
        log(f"[{name}] {pass_summary(step.stats)}" + (f" (given {', '.join(keys)})" if keys else ""))
    compressed = result.program.eval()
    with staged_folder(output) as staging:
        try:  # before anything else can fail: the training is kept
            compressed.save(staging / "model_train.pt2")
        except BaseException as error:  # Ctrl-C or a full disk during the save: kept beside the output instead
            _raise_keeping(error, _keep_program(compressed, output), log)
        try:
            return _measure_and_write(dense, dense_one, compressed, result, injected, recipe, splits, staging,
                                      output, data=data, options=options, log=log, before=before,
                                      seconds=seconds, started=started, stage_meter=meter)
        except BaseException as error:  # a Ctrl-C during the final measurement too: the training is what took hours
            _raise_keeping(error, _keep_training(staging / "model_train.pt2", output), log)


def _raise_keeping(error: BaseException, kept: Path, log: Callable[[str], None]) -> NoReturn:
    """`error` again, saying where the trained model was kept."""
    if not isinstance(error, PrunefxError):  # a fault of ours stays one (exit 3), an interrupt one (130)
        log(f"the trained model was kept in {kept}")
        error.add_note(f"the trained model was kept in {kept}")  # the CLI's error line ends with it, on stderr
        raise error
    raise PrunefxError(f"{error}; the trained model was kept in {kept}") from error


def _keep_program(program: Program, output: Path) -> Path:
    """`program` saved and kept beside the output folder as _keep_training keeps it (a temporary folder beside it
    first: the same file system, so that the move is a rename)."""
    with signals_held(), tempfile.TemporaryDirectory(dir=output.absolute().parent,
                                                     prefix=f".{hidden_stem(output)}.") as folder:
        saved = Path(folder) / "model_train.pt2"
        program.save(saved)
        return _keep_training(saved, output)


def _keep_training(saved: Path, output: Path) -> Path:
    """Hours of training are not thrown away with the failed run: the trained model moves beside the
    output folder (not into it: the folder only ever holds complete results)."""
    folder = output.absolute().parent
    number = 1
    while True:
        kept = folder / _kept_name(output.name, ".model_train.pt2" if number == 1 else f".model_train-{number}.pt2")
        with signals_held():  # a second Ctrl-C between the two steps would leave an empty file under the name
            try:  # the name is claimed in one step: another run failing at the same moment takes the next one
                kept.touch(exist_ok=False)
            except FileExistsError:  # an earlier failed run's trained model stays too
                number += 1
                continue
            os.replace(saved, kept)
        return kept


def _kept_name(name: str, suffix: str) -> str:
    """`name` + `suffix`, `name` cut where the whole would pass what a file system allows in one name (255
    bytes): an output folder's name may use them all."""
    return cut_name(name, MAX_NAME_BYTES - len(os.fsencode(suffix))) + suffix


def _measure_and_write(dense, dense_one, compressed, result, injected, recipe, splits, staging: Path,
                       output: Path, *, data, options, log, before, seconds, started, stage_meter) -> dict:
    """Evaluate, cut to batch 1, export, time against the dense model and write the report into
    `staging` (moved to `output` by the caller); the report names the files as they will be in `output`."""
    batch = int(dense.example_inputs[0].shape[0])
    clock = time.perf_counter()
    after = _accuracy(compressed, splits, options.eval_batches, options.device,
                      test=stage_meter.test_score_of(compressed) if stage_meter else None)
    seconds["evaluate_compressed"] = time.perf_counter() - clock
    log(f"[compressed] test {_percent(after['test'])}, val {_percent(after['val'])}")

    clock = time.perf_counter()
    compressed_one = rebatch(compressed, 1)
    delivered = write_model(staging, compressed_one, opset=options.opset)
    seconds["export"] = time.perf_counter() - clock

    clock = time.perf_counter()
    with current_gpu(resolve_device(options.device) if options.device else None):  # the GPU the stages ran on
        measured = delivered_latency((dense, compressed), (dense_one, compressed_one), staging / "model.onnx", options)
    seconds["latency"] = time.perf_counter() - clock
    seconds["total"] = time.perf_counter() - started

    budget = _budget(result, options)
    written = ("model.pt2", "model_train.pt2", "model.onnx", "report.json", "report.md", CHART_FILE,
               *([BUDGET_CHART_FILE] if budget else []))
    sections = {
        "data": str(data), "data_seed": splits.train.seed if splits.train is not None else None,
        "normalisation": normalisation_record(statistics_read(data, dense.normalisation)),
        "calibrated_on": calibrated_on(recipe.pipeline, splits),
        "task": splits.task, "classes": list(splits.classes),
        "labels": getattr(splits.evaluation, "describes", "the data set's labels"), "batch_size": batch,
        "input_shape": list(splits.input_shape),
        "recipe": {"name": recipe.name, "path": str(recipe.path), "spec": json_safe(recipe.spec)},
        "eval_batches": options.eval_batches,
        "accuracy": {"before": before, "after": after},
        "speedup": measured.speedup, **{key: value for key, value in delivered.items() if key != "parity"},
        "budget_measured_on": {"backend": options.backend, "precision": options.precision, "batch": options.batch,
                               "threads": options.threads, "runs": options.runs},
        "passes": [{"pass": name, "modified": step.modified, "injected": keys, "stats": json_safe(step.stats)}
                   for (name, step), keys in zip(result.steps, injected)],
        "seconds": seconds,
        "stages": stage_meter.rows if stage_meter else None,
    }
    facts = ReportFacts("compress", dense.name, Costs.of(dense_one, compressed_one), output_files(output, *written),
                        parity=delivered["parity"], budget=budget, latency=measured, sections=sections,
                        calibration=_calibration_read(recipe, splits, data, batch))
    return _write_report(facts, staging, title=f"{dense.name}, recipe {recipe.name}")


def _calibration_read(recipe: Recipe, splits: DataSplits, data: str, batch: int) -> str | None:
    """report.json's `calibration`: the batches the recipe's passes read as calibration data, in words (inject
    gives every such pass the first CALIBRATION_BATCHES of one split); None where no pass reads any."""
    split = calibrated_on(recipe.pipeline, splits)
    if split is None:
        return None
    batches = min(CALIBRATION_BATCHES, len(calibration_split(splits)[1]))
    return f"{batches} batches of {batch} images of {data}'s {split} split"


def _budget(result, options: Options) -> dict | None:
    """report.json's `budget`: the last choose_for_budget pass's statistics and where it measured; None
    for a recipe without a budget."""
    chosen = [step.stats for name, step in result.steps if name == "choose_for_budget"]
    if not chosen:
        return None
    return {**json_safe(chosen[-1]), "backend": options.backend, "precision": options.precision, "batch": options.batch}


def _write_report(facts: ReportFacts, staging: Path, *, title: str) -> dict:
    """The charts, report.json and report.md in `staging`, named as they will be in the output folder."""
    variants = variants_from_compress(json_safe(report_json.report_json(facts)))  # read from the report's figures
    write_chart(variants, staging / CHART_FILE, title=title)
    if facts.budget is not None:  # every width/depth/INT8 combination the budget pass tried, as a chart
        write_budget_chart(facts.budget, staging / BUDGET_CHART_FILE, title=f"{facts.model}: budget {facts.budget['budget']}")
    sections = {**facts.sections, "variants": [variant.to_dict() for variant in variants]}
    report = report_json.write(staging, replace(facts, sections=sections))
    (staging / "report.md").write_text(markdown_report(report))
    return report
