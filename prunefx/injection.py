"""What the compress flow gives the passes of a recipe: data, a teacher, calibration batches, measurers.

A recipe is YAML and cannot hold loaders or models, so the passes that need them get them here. What a pass
needs is declared by its config fields with a `source`, narrowed by `reads()`; a key the recipe sets itself
is left alone. The sources (train, val, teacher, task, calibration, labelled_calibration, measure, latency):
see docs/reference/recipes.md, 'What compress gives the passes'.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable

from prunefx.compress_options import DEFAULTS, Options
from prunefx.data.splits import DataSplits
from prunefx.graph import Program
from prunefx.graph.errors import PrunefxError
from prunefx.passes.core.pipeline import Pipeline, Step
from prunefx.runtime.measure.pairs import Measurement
from prunefx.runtime.measure.speedup import PairMeasurer, SpeedupOf

CALIBRATION_BATCHES = 4


def injected_keys(step: Step) -> dict[str, str]:
    """The keys `step` gets injected, key -> source: those its pass declares and reads with this config,
    and the recipe does not set itself."""
    config = step.function.contract.parse(step.config)
    if config is None:  # a user's pass without a config class gets nothing
        return {}
    return config.needed_inputs(given=step.config)


class FirstBatches:
    """The first `limit` batches of a loader (all of them when `limit` is None), re-iterable."""

    def __init__(self, loader: Iterable, limit: int | None):
        self.loader, self.limit = loader, limit

    def __len__(self) -> int:
        return len(self.loader) if self.limit is None else min(len(self.loader), self.limit)

    def __iter__(self):
        return iter(self.loader) if self.limit is None else itertools.islice(iter(self.loader), self.limit)


# ---- injection ----------------------------------------------------------------------------------

def _sources(dense: Program, splits: DataSplits, eval_batches: int | None, needed: set[str],
             options: Options) -> dict:
    sources = {"train": splits.train,
               "val": FirstBatches(splits.val, eval_batches) if splits.val is not None else None,
               "task": splits.task}
    if "teacher" in needed:
        teacher = dense.clone().eval()
        for parameter in teacher.module.parameters():
            parameter.requires_grad_(False)
        sources["teacher"] = teacher
    _, loader = calibration_split(splits)
    if "calibration" in needed:
        sources["calibration"] = [(inputs,) for inputs, _ in itertools.islice(iter(loader), CALIBRATION_BATCHES)]
    if "labelled_calibration" in needed:
        sources["labelled_calibration"] = list(itertools.islice(iter(loader), CALIBRATION_BATCHES))
    if needed & {"measure", "latency"}:  # one Measurement, checked once, for every pass that measures; the
        # command line's --threads and --runs, as prune's and depth's budgets read them
        measurement = Measurement.of(options.backend, threads=options.threads, runs=options.runs,
                                     precision=options.precision, trtexec=options.trtexec, batch=options.batch,
                                     compile=options.compile, opset=options.opset)
        if "measure" in needed:
            sources["measure"] = measurement.speedup()
        if "latency" in needed:
            sources["latency"] = measurement.pair()
    return sources


def calibration_split(splits: DataSplits) -> tuple[str, object]:
    """(name, loader) of the split the calibration batches are read from: train, else the one evaluated on."""
    if splits.train is not None:
        return "train", splits.train
    return ("val", splits.val) if splits.val is not None else ("test", splits.test)


def calibrated_on(pipeline: Pipeline, splits: DataSplits) -> str | None:
    """The split `pipeline`'s calibration batches come from ("train", "val", "test"); None: no pass reads any."""
    sources = {source for step in pipeline.steps for source in injected_keys(step).values()}
    return calibration_split(splits)[0] if sources & {"calibration", "labelled_calibration"} else None


class MeasurerRelease:
    """Lets go of each measurer injected into `pipeline` (its exported files, its models and engines on a GPU)
    once the last step given it is done, not at the process's exit: a budget pass's candidates are not held
    through the distillation after it. `after_step()` after each step; `close()` releases the rest."""

    def __init__(self, pipeline: Pipeline):
        self.done = 0
        self.last: dict[int, tuple[object, int]] = {}  # id -> (measurer, index of the last step given it)
        for index, step in enumerate(pipeline.steps):
            for value in step.config.values():
                if isinstance(value, (PairMeasurer, SpeedupOf)):
                    self.last[id(value)] = (value, index)

    def after_step(self) -> None:
        self.done += 1
        for key, (measurer, index) in list(self.last.items()):
            if index < self.done:
                del self.last[key]
                measurer.close()

    def close(self) -> None:
        measurers = [measurer for measurer, _ in self.last.values()]
        self.last.clear()
        for measurer in measurers:
            measurer.close()


def inject(pipeline: Pipeline, dense: Program, splits: DataSplits, *, data: str,
           eval_batches: int | None = None, options: Options | None = None) -> tuple[Pipeline, list[list[str]]]:
    """The pipeline with data, teacher and calibration batches in the configs of the passes that need
    them (as each pass declares), and, per step, the keys that were injected; `options` says where a budget
    is measured (Options.backend)."""
    wanted = [injected_keys(step) for step in pipeline.steps]
    for step, keys in zip(pipeline.steps, wanted):
        if splits.train is None and "train" in keys.values():
            raise PrunefxError(f"recipe pass '{step.name}' trains, but {data} has no training split "
                               f"(use fashion-mnist or a folder with train/ and val/)")
    sources = _sources(dense, splits, eval_batches, {source for keys in wanted for source in keys.values()},
                       options or DEFAULTS)
    steps = [Step(step.function, {**{key: sources[source] for key, source in keys.items()}, **step.config})
             for step, keys in zip(pipeline.steps, wanted)]
    if not splits.labelled:
        _refuse_training_without_a_teacher([step for step, keys in zip(steps, wanted) if "train" in keys.values()],
                                           data)
    return Pipeline(steps, verify=pipeline.verify, progress=pipeline.progress), [sorted(keys) for keys in wanted]


def _refuse_training_without_a_teacher(training: list[Step], data: str) -> None:
    """Unlabelled images have no labels to train on: the dense model's outputs, through distillation, are all a
    training pass learns from, and one with kd_weight 0 and no feature_losses would train on a loss of 0."""
    for step in training:
        parsed = step.function.contract.parse(step.config) if hasattr(step.function, "contract") else None
        if parsed is not None and getattr(parsed, "kd_weight", None) == 0 and not getattr(parsed, "feature_losses", None):
            raise PrunefxError(f"recipe pass '{step.name}' trains with kd_weight 0, but {data} is unlabelled: "
                               "distillation from the dense model is all it could learn from; set kd_weight > 0 "
                               "or give feature_losses")
