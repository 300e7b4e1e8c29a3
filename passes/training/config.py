"""The recovery trainer's configuration (`TrainConfig`, see passes/training/engine.py) and its error type.

Every field is checked when the config is built, so a bad value in a recipe fails before any training
starts, with the field's name and the accepted range.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from prunefx.graph.errors import PrunefxError
from prunefx.passes.core.pass_config import PassConfig, option

OPTIMIZERS = ("sgd", "adamw")
# What the model's output means, which decides the losses (passes/training/engine.py). The names are those of
# prunefx/data/splits.py's DataSplits.task, so a data set's task can be handed over as it is.
CLASSIFICATION, SEGMENTATION, DETECTION = "classification", "segmentation", "detection"
TASKS = (CLASSIFICATION, SEGMENTATION, DETECTION)
PRECISIONS = ("fp32", "bf16")  # what a training step computes in (passes/training/precision.py)


class TrainingError(PrunefxError):
    """Bad training configuration or data, or an unusable checkpoint."""


# --- configuration -------------------------------------------------------------------------------

@dataclass(frozen=True)
class FeaturePair:
    student: str
    teacher: str
    weight: float = 1.0


@dataclass
class TrainConfig:
    """How to train. Exactly one of `steps` and `epochs` (epochs need a data source with a length)."""

    steps: int | None = None
    epochs: int | None = None
    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9  # SGD momentum, or AdamW's beta1
    weight_decay: float = 1e-4
    warmup_steps: int = 0
    temperature: float = 4.0
    kd_weight: float = 0.9
    # student node name -> teacher node name, (teacher node name, weight) or {"teacher": ..., "weight": ...}
    feature_losses: Mapping[str, Any] = field(default_factory=dict)
    max_grad_norm: float | None = None
    eval_every: int = 0  # steps; 0: evaluate once at the end (when there is evaluation data)
    checkpoint_dir: str | os.PathLike | None = None
    checkpoint_every: int = 0  # steps; 0: one checkpoint at the end (when checkpoint_dir is set)
    resume: bool = False
    progress: bool | None = None  # None: a bar when stderr is a terminal
    seed: int = 0
    device: str | None = None  # "auto", "cpu", "cuda", "cuda:N" (graph/placement.py); default: where the program is
    task: str = CLASSIFICATION  # detection: YOLO export output, distillation only (passes/training/engine.py)
    precision: str = "fp32"  # or "bf16": the forward passes and losses under bfloat16 autocast (precision.py)

    def __post_init__(self) -> None:
        if (self.steps is None) == (self.epochs is None):
            raise TrainingError("give exactly one of 'steps' and 'epochs'")
        for name in ("steps", "epochs"):
            if getattr(self, name) is not None:
                _check_int(name, getattr(self, name), minimum=1)
        if self.optimizer not in OPTIMIZERS:
            raise TrainingError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, not {self.optimizer!r}")
        _check_number("lr", self.lr, low=0.0, low_open=True)
        _check_number("momentum", self.momentum, low=0.0, high=1.0, high_open=True)
        _check_number("weight_decay", self.weight_decay, low=0.0)
        _check_number("temperature", self.temperature, low=0.0, low_open=True)
        _check_number("kd_weight", self.kd_weight, low=0.0, high=1.0)
        if self.max_grad_norm is not None:
            _check_number("max_grad_norm", self.max_grad_norm, low=0.0, low_open=True)
        for name in ("warmup_steps", "eval_every", "checkpoint_every", "seed"):
            _check_int(name, getattr(self, name), minimum=0 if name != "seed" else None)
        for name in ("resume",):
            if not isinstance(getattr(self, name), bool):
                raise TrainingError(f"'{name}' must be true or false, not {getattr(self, name)!r}")
        if self.precision not in PRECISIONS:
            raise TrainingError(f"'precision' must be one of {', '.join(PRECISIONS)}, not {self.precision!r}")
        if self.progress is not None and not isinstance(self.progress, bool):
            raise TrainingError(f"'progress' must be true, false or null, not {self.progress!r}")
        if self.steps is not None and self.warmup_steps >= self.steps:  # with epochs: known once the data is
            raise TrainingError(warmup_text(self.warmup_steps, self.steps, self.lr))
        if (self.checkpoint_every or self.resume) and self.checkpoint_dir is None:
            raise TrainingError("'checkpoint_every' and 'resume' need a 'checkpoint_dir'")
        self.feature_losses = _feature_pairs(self.feature_losses)
        _check_task(self)

    @property
    def feature_pairs(self) -> tuple[FeaturePair, ...]:
        return tuple(self.feature_losses.values())

    @classmethod
    def fields_of(cls, options: Mapping[str, Any] | Any) -> dict[str, Any]:
        """The TrainConfig fields of `options`: a mapping's entries, or a parsed pass config's attributes (a pass
        config holds more)."""
        names = [f.name for f in fields(TrainConfig)]
        if isinstance(options, Mapping):
            return {key: value for key, value in options.items() if key in names}
        return {name: getattr(options, name) for name in names if hasattr(options, name)}

    @classmethod
    def from_dict(cls, options: Mapping[str, Any], *, owner: str = "training") -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(options) - known
        if unknown:
            raise TrainingError(f"{owner}: unknown option(s) {sorted(unknown)} (known: {sorted(known)})")
        return cls(**options)


@dataclass
class TrainingPassConfig(TrainConfig, PassConfig):
    """The config of a pass that trains (distill, prune_while_training): the trainer's fields and the
    objects its caller gives (injected by `prunefx compress` from these declarations)."""

    data: Any = option(source="train", help="training batches, (inputs, labels) tuples")
    eval_data: Any = option(source="val", help="evaluation batches")
    teacher: Any = option(source="teacher", help="the model to distil from (default: a frozen copy of the input)")
    # Redeclared as an input: `prunefx compress` knows the data set's task and hands it over.
    task: str = option(CLASSIFICATION, source="task", choices=TASKS,
                       help="what the output means: classification, segmentation or detection")
    # Redeclared with its choices and help, for the pass reference and the config's own check.
    precision: str = option("fp32", choices=PRECISIONS,
                            help="fp32, or bf16: forward passes and losses under bfloat16 autocast, weights, "
                                 "gradients and optimizer state in float32 (a GPU since Ampere; slower on a CPU "
                                 "without bfloat16 arithmetic)")

    def check(self) -> None:
        """Objects the caller hands over: a recipe can write text or a number in their place (`data: /my/images`),
        which would fail only when the pass runs, after the passes before it."""
        for name in ("data", "eval_data", "teacher"):
            value = getattr(self, name)
            if isinstance(value, (str, bytes, os.PathLike, int, float)):
                raise TrainingError(f"{self.owner}: '{name}' is an object the caller gives ({_GIVEN[name]}), "
                                    f"not {value!r:.60}")


_GIVEN = {"data": "training batches; compress: --data", "eval_data": "evaluation batches; compress: --data",
          "teacher": "a Program or module; compress: the dense model"}


def warmup_text(warmup_steps: int, steps: int, lr: float) -> str:
    """Why warmup_steps must stay below the run's training steps."""
    return (f"warmup_steps={warmup_steps} is not below the run's {steps} training steps: the learning rate would "
            f"still be rising when the run ends, never reaching lr={lr:g}; give fewer warmup_steps or more steps")


def _check_task(config: TrainConfig) -> None:
    if not isinstance(config.task, str) or config.task not in TASKS:
        raise TrainingError(f"'task' must be one of {', '.join(TASKS)}, not {config.task!r}")
    # A detector has no ground-truth loss here (passes/training/engine.py), so distillation is all it learns from.
    if config.task == DETECTION and config.kd_weight == 0 and not config.feature_losses:
        raise TrainingError("task 'detection' trains on distillation only: set kd_weight > 0 or give "
                            "feature_losses (kd_weight=0 without them would leave nothing to learn from)")


def _check_int(name: str, value, *, minimum: int | None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TrainingError(f"'{name}' must be an integer, not {value!r}")
    if minimum is not None and value < minimum:
        raise TrainingError(f"'{name}' must be at least {minimum}, not {value}")


def _check_number(name: str, value, *, low: float, high: float | None = None,
                  low_open: bool = False, high_open: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TrainingError(f"'{name}' must be a finite number, not {value!r}")
    too_low = value <= low if low_open else value < low
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        interval = f"{'(' if low_open else '['}{low:g}, {'inf' if high is None else f'{high:g}'}" \
                   f"{')' if high_open or high is None else ']'}"
        raise TrainingError(f"'{name}' must lie in {interval}, not {value}")


def _feature_pairs(spec: Mapping[str, Any]) -> dict[str, FeaturePair]:
    if not isinstance(spec, Mapping):
        raise TrainingError(f"'feature_losses' must map student node names to teacher node names, not {spec!r}")
    pairs = {}
    for student, target in spec.items():
        if isinstance(target, FeaturePair):
            pair = target
        elif isinstance(target, str):
            pair = FeaturePair(student, target)
        elif isinstance(target, (tuple, list)) and len(target) == 2 and isinstance(target[0], str):
            pair = FeaturePair(student, target[0], target[1])
        elif isinstance(target, Mapping) and set(target) <= {"teacher", "weight"} and "teacher" in target:
            pair = FeaturePair(student, target["teacher"], target.get("weight", 1.0))
        else:
            raise TrainingError(f"feature_losses[{student!r}]: expected a teacher node name, (name, weight) or "
                                f"{{'teacher': name, 'weight': w}}, not {target!r}")
        _check_number(f"feature_losses[{student!r}] weight", pair.weight, low=0.0)
        pairs[student] = pair
    return pairs
