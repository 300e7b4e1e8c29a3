"""Recovery training with knowledge distillation: the engine behind the `distill` pass.

A `Trainer` trains a Program's GraphModule against a frozen teacher with

    loss = (1 - kd_weight) * CE(student, labels)  +  kd_weight * KD(student, teacher; T)
           + sum over feature pairs of  weight * MSE(student node, teacher node)

- CE is the task loss (cross-entropy; label -1 is ignored, so padded batches are harmless);
- KD is `kd_loss`: KL(softmax(teacher / T) || softmax(student / T)) per row, averaged over rows
  ("batchmean"), times T^2 so that its gradients keep their scale whatever T is;
- feature pairs read intermediate tensors of both graphs by fx node name (see `tap_outputs`).
`kd_weight` is the usual alpha: 1 is pure distillation, 0 is plain fine-tuning. Dense outputs
(segmentation, [N, C, H, W]) are handled per pixel: the class dim is always dim 1.

Everything that reads gradients (the `after_backward` hooks, e.g. CPD's Fisher channel importance)
sees the gradients of that total loss, after DDP has averaged them across processes and before
clipping. A hook may replace the Program structurally (channels removed) through
`trainer.replace_program`: the optimizer is rebuilt on the new parameters (momentum restarts), the
learning-rate schedule keeps its position.

Learning rate: linear warm-up for `warmup_steps` steps (`lr * (s + 1) / (warmup_steps + 1)` at step
s), then a half cosine from `lr` at step `warmup_steps` down to 0 at step `total_steps`. Weight decay
applies to weights of two or more dims only (not to biases or norm scales).

Preconditions: the Program has a static batch size (that of its example inputs); every training
and evaluation batch has exactly that many items per process. Batches are `(inputs, labels)`
tuples, `inputs` a tensor or a tuple of tensors.

Distributed: launched by `torchrun` (WORLD_SIZE > 1 in the environment), the trainer joins the
process group (gloo on CPU, nccl on CUDA), wraps the module in DistributedDataParallel and gives
each rank its slice of every global batch (through `data.shard(rank, world_size)` when the loader
has it). Only rank 0 writes checkpoints and shows progress.

Checkpoints (`checkpoint_dir`): `program.pt2` (Program.save, eval mode) and `trainer_state.pt`
(optimizer, scheduler, step, data position, RNG states, logs; plain tensors and numbers, read with
`torch.load(weights_only=True)`). `resume=True` continues from them and reaches the same weights as
an uninterrupted run; a missing checkpoint starts from scratch, a corrupt or mismatched one is an error.

Non-goals: mixed precision, gradient accumulation, learned adapters between student and teacher
features of different widths (feature pairs must have equal shapes), resuming with a different number
of processes, fast mid-epoch resume (the batches already seen in the epoch are read and skipped).
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import math
import os
import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
import torch.utils._pytree as pytree
from tqdm.auto import tqdm

from prunefx.graph import Program
from prunefx.graph.errors import PrunefxError, first_line

IGNORE_LABEL = -1
OPTIMIZERS = ("sgd", "adamw")
PROGRAM_FILE = "program.pt2"
STATE_FILE = "trainer_state.pt"
_STATE_FORMAT = 1
_STATS_WINDOW = 20  # final losses are averaged over this many steps, single steps are noisy


class TrainingError(PrunefxError):
    """Bad training configuration or data, or an unusable checkpoint."""


# --- losses --------------------------------------------------------------------------------------

def _class_last(logits: torch.Tensor) -> torch.Tensor:
    """[N, C] stays; [N, C, *spatial] becomes [N * prod(spatial), C]: one distribution per pixel."""
    if logits.dim() <= 2:
        return logits
    return logits.movedim(1, -1).reshape(-1, logits.shape[1])


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 4.0) -> torch.Tensor:
    """T^2 * KL(softmax(teacher / T) || softmax(student / T)), summed over classes, mean over rows."""
    if student_logits.shape != teacher_logits.shape:
        raise TrainingError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                            f"{tuple(teacher_logits.shape)} differ in shape")
    student, teacher = _class_last(student_logits), _class_last(teacher_logits)
    log_student = F.log_softmax(student / temperature, dim=-1)
    log_teacher = F.log_softmax(teacher / temperature, dim=-1)
    kl = F.kl_div(log_student, log_teacher, reduction="batchmean", log_target=True)
    return kl * temperature * temperature


def feature_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean squared error between two intermediate tensors of the same shape."""
    if student.shape != teacher.shape:
        raise TrainingError(f"feature shapes differ: student {tuple(student.shape)}, teacher "
                            f"{tuple(teacher.shape)}; pick tensors whose widths were not pruned")
    return F.mse_loss(student, teacher)


def task_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the labelled items (label -1 is padding); 0, with a graph, when there are none."""
    total = F.cross_entropy(logits, labels, ignore_index=IGNORE_LABEL, reduction="sum")
    return total / (labels != IGNORE_LABEL).sum().clamp(min=1)


def logits_of(output: Any) -> torch.Tensor:
    """The logits in a model's output: the tensor itself, the first item of a tuple or list, or the
    'out' entry (else the first value) of a dict (torchvision segmentation models return {'out': ...})."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output:
        return logits_of(output[0])
    if isinstance(output, Mapping) and output:
        return logits_of(output["out"] if "out" in output else next(iter(output.values())))
    raise TrainingError(f"cannot find logits in a model output of type {type(output).__name__}")


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
    device: str | None = None  # default: where the program's parameters are

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
        if self.progress is not None and not isinstance(self.progress, bool):
            raise TrainingError(f"'progress' must be true, false or null, not {self.progress!r}")
        if (self.checkpoint_every or self.resume) and self.checkpoint_dir is None:
            raise TrainingError("'checkpoint_every' and 'resume' need a 'checkpoint_dir'")
        self.feature_losses = _feature_pairs(self.feature_losses)

    @property
    def feature_pairs(self) -> tuple[FeaturePair, ...]:
        return tuple(self.feature_losses.values())

    @classmethod
    def from_dict(cls, options: Mapping[str, Any], *, owner: str = "training") -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(options) - known
        if unknown:
            raise TrainingError(f"{owner}: unknown option(s) {sorted(unknown)} (known: {sorted(known)})")
        return cls(**options)


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


# --- learning-rate schedule ----------------------------------------------------------------------

def lr_factor(step: int, *, warmup_steps: int, total_steps: int) -> float:
    """Multiplier of the base lr at optimizer step `step` (0-based): linear warm-up, then cosine to 0."""
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    span = max(total_steps - warmup_steps, 1)
    progress = min((step - warmup_steps) / span, 1.0)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def make_scheduler(optimizer: torch.optim.Optimizer, *, warmup_steps: int, total_steps: int,
                   start_step: int = 0) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR whose next step is `start_step` (a rebuilt optimizer keeps the schedule's position)."""
    def factor(step: int) -> float:  # a plain function: LambdaLR's state_dict then stores no callable
        return lr_factor(step, warmup_steps=warmup_steps, total_steps=total_steps)

    for group in optimizer.param_groups:
        group.setdefault("initial_lr", group["lr"])
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor, last_epoch=start_step - 1)


def _make_optimizer(module: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    params = [p for _, p in module.named_parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": config.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum)
    return torch.optim.AdamW(groups, lr=config.lr, betas=(config.momentum, 0.999))


# --- reading intermediate tensors ----------------------------------------------------------------

def tap_outputs(module: torch.fx.GraphModule, names: Sequence[str]) -> torch.fx.GraphModule:
    """A copy of `module` whose forward returns `(output, (tensor of node names[0], ...))`.

    The copy shares parameters and buffers with `module` (training one trains the other); only the
    graph is new. Cheaper than an fx Interpreter, which runs node by node in Python."""
    nodes = {node.name: node for node in module.graph.nodes}
    missing = [name for name in names if name not in nodes]
    if missing:
        sample = ", ".join(n.name for n in module.graph.nodes if n.op == "call_function")
        raise TrainingError(f"no node named {', '.join(map(repr, missing))} in the graph (nodes: {sample[:400]})")
    graph = torch.fx.Graph()
    copies: dict[torch.fx.Node, torch.fx.Node] = {}
    output = graph.graph_copy(module.graph, copies)
    graph.output((output, tuple(copies[nodes[name]] for name in names)))
    tapped = torch.fx.GraphModule(module, graph)
    # torch.export's graphs return flat outputs re-nested by a pytree spec; keep it to rebuild them.
    info = getattr(module.graph._codegen, "pytree_info", None)
    tapped.out_spec = info.out_spec if info is not None else None
    return tapped


def _run_tapped(tapped: torch.nn.Module, out_spec, inputs: tuple[torch.Tensor, ...]):
    output, features = tapped(*inputs)
    if out_spec is not None:
        output = pytree.tree_unflatten(list(output), out_spec)
    return output, features


# --- data ----------------------------------------------------------------------------------------

class _Shard:
    """This rank's slice of every global batch of a plain iterable (a loader with `shard` does it itself)."""

    def __init__(self, data: Iterable, rank: int, world_size: int):
        self.data, self.rank, self.world_size = data, rank, world_size

    def __len__(self) -> int:
        return len(self.data)

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.data, "set_epoch"):
            self.data.set_epoch(epoch)

    def __iter__(self):
        for inputs, labels in map(_split_batch, self.data):
            yield tuple(self._slice(x) for x in inputs), self._slice(labels)

    def _slice(self, tensor: torch.Tensor) -> torch.Tensor:
        if tensor.shape[0] % self.world_size:
            raise TrainingError(f"a global batch of {tensor.shape[0]} items does not split into "
                                f"{self.world_size} equal shards")
        size = tensor.shape[0] // self.world_size
        return tensor[self.rank * size:(self.rank + 1) * size]


def _shard(data: Iterable, rank: int, world_size: int) -> Iterable:
    if world_size == 1:
        return data
    if hasattr(data, "shard"):
        return data.shard(rank, world_size)
    return _Shard(data, rank, world_size)


def _split_batch(batch) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise TrainingError(f"batches must be (inputs, labels) pairs, got {type(batch).__name__}")
    inputs, labels = batch
    inputs = (inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs)
    return inputs, labels


def _module_device(module: torch.nn.Module) -> torch.device:
    tensor = next(itertools.chain(module.parameters(), module.buffers()), None)
    return tensor.device if tensor is not None else torch.device("cpu")


# --- evaluation ----------------------------------------------------------------------------------

def _eval_mode(model) -> Callable[[], None]:
    """Put `model` in eval mode; return the function that restores its mode. Graph modules carry the
    mode as arguments of their batch-norm/dropout nodes, which only Program knows how to flip."""
    if isinstance(model, torch.fx.GraphModule):
        model = Program(model, (), name="model")
    was_training = model.training
    model.eval()
    return lambda: model.train(was_training)


@torch.no_grad()
def _eval_totals(model, batches: Iterable, device: torch.device) -> torch.Tensor:
    """[correct, summed cross-entropy, labelled items] over `batches` (label -1 is padding)."""
    module = model.module if isinstance(model, Program) else model
    totals = torch.zeros(3, dtype=torch.float64, device=device)
    restore = _eval_mode(model)
    try:
        for batch in batches:
            inputs, labels = _split_batch(batch)
            inputs = tuple(x.to(device) for x in inputs)
            labels = labels.to(device)
            logits = logits_of(module(*inputs))
            valid = labels != IGNORE_LABEL
            totals[0] += ((logits.argmax(1) == labels) & valid).sum()
            totals[1] += F.cross_entropy(logits, labels, ignore_index=IGNORE_LABEL, reduction="sum").double()
            totals[2] += valid.sum()
    finally:
        restore()
    return totals


def _summary(totals: torch.Tensor) -> dict[str, float]:
    correct, loss, count = totals.tolist()
    if count == 0:
        return {"accuracy": float("nan"), "loss": float("nan"), "count": 0}
    return {"accuracy": correct / count, "loss": loss / count, "count": int(count)}


def evaluate(model: Program | torch.nn.Module, batches: Iterable, *, device: str | torch.device | None = None
             ) -> dict[str, float]:
    """Top-1 accuracy (per pixel for dense outputs) and mean cross-entropy over the labelled items of
    `(inputs, labels)` batches; label -1 marks padding. Runs in eval mode and restores the mode after."""
    module = model.module if isinstance(model, Program) else model
    device = torch.device(device) if device is not None else _module_device(module)
    return _summary(_eval_totals(model, batches, device))


# --- distributed ---------------------------------------------------------------------------------

def _distributed_world(device: torch.device) -> tuple[int, int, bool]:
    """(rank, world size, whether this call created the process group)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), False
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return 0, 1, False
    missing = [name for name in ("RANK", "MASTER_ADDR", "MASTER_PORT") if name not in os.environ]
    if missing or not dist.is_available():
        raise TrainingError(f"WORLD_SIZE={world_size} but {', '.join(missing) or 'torch.distributed'} is "
                            "missing; launch with torchrun")
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size(), True


def _resolve_device(config: TrainConfig, module: torch.nn.Module) -> torch.device:
    device = torch.device(config.device) if config.device is not None else _module_device(module)
    # Under torchrun every process owns one GPU: the one named by LOCAL_RANK.
    if device.type == "cuda" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


# --- RNG states and checkpoint files -------------------------------------------------------------

def _rng_state() -> dict:
    numpy_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
        "python": random.getstate(),
        "numpy": [numpy_state[0], torch.from_numpy(numpy_state[1].astype(np.int64)), *numpy_state[2:]],
    }


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    random.setstate(state["python"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _parameter_shapes(module: torch.nn.Module) -> list[list]:
    return [[name, list(p.shape)] for name, p in module.named_parameters()]


# --- the trainer ---------------------------------------------------------------------------------

AfterBackward = Callable[["Trainer"], None]
AfterStep = Callable[["Trainer", int], None]


class Trainer:
    """Trains `program.module` against a frozen `teacher`; see the module docstring for the loss.

    `after_backward` hooks are called as `hook(trainer)` once gradients exist (before clipping and the
    optimizer step); `after_step` hooks as `hook(trainer, step)` after the optimizer step, where `step`
    counts the steps done so far. Read gradients in the former: they are released before the latter.
    Attributes for hooks: `program`, `step`, `epoch`, `optimizer`, `scheduler`, `rank`, `world_size`,
    `last_losses` (floats of the last step), `log` (one dict per step), `history` (evaluations).
    """

    def __init__(self, program: Program, *, teacher: Program | torch.nn.Module | None, data: Iterable,
                 config: TrainConfig, eval_data: Iterable | None = None,
                 after_backward: Sequence[AfterBackward] = (), after_step: Sequence[AfterStep] = ()):
        self.config = config
        self.after_backward, self.after_step = list(after_backward), list(after_step)
        self.device = _resolve_device(config, program.module)
        self.rank, self.world_size, self._owns_process_group = _distributed_world(self.device)
        self.data = _shard(data, self.rank, self.world_size)
        self.eval_data = _shard(eval_data, self.rank, self.world_size) if eval_data is not None else None
        self.total_steps = self._total_steps()
        self.needs_teacher = config.kd_weight > 0 or bool(config.feature_pairs)
        if self.needs_teacher and teacher is None:
            raise TrainingError("distillation needs a teacher (or set kd_weight=0 without feature_losses)")
        self._teacher, self._restore_teacher = self._frozen_teacher(teacher) if self.needs_teacher else (None, None)
        self.step, self.epoch, self.batch_in_epoch = 0, 0, 0
        self.log: list[dict[str, float]] = []
        self.history: list[dict[str, float]] = []
        self.last_losses: dict[str, float] = {}
        self._home_device = _module_device(program.module)
        self._initial_mode = program.training
        self._attach(program)

    # --- setup -------------------------------------------------------------------------------------
    def _total_steps(self) -> int:
        if self.config.steps is not None:
            return self.config.steps
        if not hasattr(self.data, "__len__"):
            raise TrainingError("'epochs' needs data with a length (a list or a loader); give 'steps' instead")
        if len(self.data) == 0:
            raise TrainingError("the training data holds no batches")
        return self.config.epochs * len(self.data)

    def _frozen_teacher(self, teacher):
        """The teacher in eval mode on the training device, and the function that undoes changes to it."""
        if isinstance(teacher, (Program, torch.fx.GraphModule)):
            module = teacher.module if isinstance(teacher, Program) else teacher
            # A graph carries its mode in its batch-norm/dropout nodes: flip a copy, never the caller's graph.
            if isinstance(teacher, torch.fx.GraphModule) or teacher.training or _module_device(module) != self.device:
                module = Program(copy.deepcopy(module), (), name="teacher").eval().module.to(self.device)
            restore = None
        elif isinstance(teacher, torch.nn.Module):
            if self.config.feature_pairs:
                raise TrainingError("feature_losses need a teacher captured as a Program (nodes are read by name)")
            was_training, module = teacher.training, teacher.to(self.device).eval()
            restore = lambda: teacher.train(was_training)  # noqa: E731
        else:
            raise TrainingError(f"the teacher must be a Program or a torch.nn.Module, not {type(teacher).__name__}")
        if self.config.feature_pairs:
            tapped = tap_outputs(module, [pair.teacher for pair in self.config.feature_pairs])
            return (lambda inputs: _run_tapped(tapped, tapped.out_spec, inputs)), restore
        return (lambda inputs: (module(*inputs), ())), restore

    def _attach(self, program: Program) -> None:
        """Train `program` from the current step on: train mode, device, DDP, a new optimizer."""
        program.train()
        program.module.to(self.device)
        self.program = program
        self._student = tap_outputs(program.module, [pair.student for pair in self.config.feature_pairs])
        self._model = self._student
        if self.world_size > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self._model = torch.nn.parallel.DistributedDataParallel(self._student, device_ids=ids)
        self.optimizer = _make_optimizer(program.module, self.config)
        self.scheduler = make_scheduler(self.optimizer, warmup_steps=self.config.warmup_steps,
                                        total_steps=self.total_steps, start_step=self.step)

    def replace_program(self, program: Program) -> None:
        """Continue training `program` instead (e.g. after channels were removed from the current one):
        new parameters, a new optimizer (momentum restarts), the learning rate where the schedule is.
        Call it from an `after_step` hook (or between fits), not between backward and the optimizer step."""
        self._attach(program)

    # --- training ----------------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        """Train to `total_steps` (resuming from the checkpoint when asked) and return statistics."""
        resumed_from = self._resume() if self.config.resume else None
        if resumed_from is None:
            torch.manual_seed(self.config.seed + self.rank)
        start_step, train_seconds, eval_seconds = self.step, 0.0, 0.0
        # tqdm's disable=None means "only on a terminal"; other ranks never draw.
        quiet = self.rank != 0 or self.config.progress is False
        bar = tqdm(total=self.total_steps, initial=self.step, unit="step", dynamic_ncols=True,
                   disable=True if quiet else (None if self.config.progress is None else False))
        batches = self._batches()
        try:
            while self.step < self.total_steps:
                started = time.perf_counter()
                self._train_step(next(batches))
                train_seconds += time.perf_counter() - started
                self._show(bar, train_seconds, start_step)
                started = time.perf_counter()
                self._periodic(final=self.step == self.total_steps)
                eval_seconds += time.perf_counter() - started
        finally:
            bar.close()
            self._release()
        stats = self._statistics(start_step, train_seconds, eval_seconds, resumed_from)
        if self._owns_process_group:
            dist.destroy_process_group()
        return stats

    def _train_step(self, batch) -> None:
        inputs, labels = self._on_device(batch)
        teacher_output, teacher_features = (None, ())
        if self.needs_teacher:
            with torch.no_grad():
                teacher_output, teacher_features = self._teacher(inputs)
        output, features = _run_tapped(self._model, self._student.out_spec, inputs)
        losses = self._losses(output, features, teacher_output, teacher_features, labels)
        self.optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        for hook in self.after_backward:
            hook(self)
        if self.config.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.program.module.parameters(), self.config.max_grad_norm)
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)  # release gradient memory before hooks and evaluation
        self.step += 1
        values = torch.stack([value.detach() for value in losses.values()])
        if self.world_size > 1:  # log the loss of the global batch, not of this rank's slice
            dist.all_reduce(values)
            values /= self.world_size
        values = values.tolist()
        self.last_losses = dict(zip(losses, values))
        self.log.append({"step": self.step, **self.last_losses, "lr": lr})
        for hook in self.after_step:
            hook(self, self.step)

    def _losses(self, output, features, teacher_output, teacher_features, labels) -> dict[str, torch.Tensor]:
        logits = logits_of(output)
        alpha = self.config.kd_weight
        # Both are computed whatever alpha is, so the statistics always show them.
        task = task_loss(logits, labels)
        kd = (kd_loss(logits, logits_of(teacher_output), self.config.temperature) if teacher_output is not None
              else logits.new_zeros(()))
        feature = logits.new_zeros(())
        for pair, student_value, teacher_value in zip(self.config.feature_pairs, features, teacher_features):
            feature = feature + pair.weight * feature_loss(student_value, teacher_value)
        return {"loss": (1 - alpha) * task + alpha * kd + feature, "task": task, "kd": kd, "feature": feature}

    def _on_device(self, batch) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        inputs, labels = _split_batch(batch)
        expected = [tuple(x.shape) for x in self.program.example_inputs]
        if [tuple(x.shape) for x in inputs] != expected:
            per_process = " per process" if self.world_size > 1 else ""
            raise TrainingError(f"a batch of shapes {[tuple(x.shape) for x in inputs]}{per_process} does not match "
                                f"the program's static input shapes {expected}: capture the program with the "
                                f"training batch size{' divided by the number of processes' if per_process else ''}")
        overlap = self.device.type == "cuda"  # copies from pinned host memory may overlap the previous step
        return (tuple(x.to(self.device, non_blocking=overlap) for x in inputs),
                labels.to(self.device, non_blocking=overlap))

    def _batches(self):
        """Training batches from the saved position on, epoch after epoch."""
        while True:
            if hasattr(self.data, "__len__") and self.batch_in_epoch >= len(self.data) > 0:
                self.epoch, self.batch_in_epoch = self.epoch + 1, 0
            if hasattr(self.data, "set_epoch"):
                self.data.set_epoch(self.epoch)
            seen_any = False
            for batch in itertools.islice(iter(self.data), self.batch_in_epoch, None):
                seen_any = True
                self.batch_in_epoch += 1
                yield batch
            if not seen_any and self.batch_in_epoch == 0:
                raise TrainingError(f"the training data yielded no batches in epoch {self.epoch}; pass a list or "
                                    "a loader that can be iterated again, not a one-shot generator")
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0

    def _show(self, bar, train_seconds: float, start_step: int) -> None:
        images = (self.step - start_step) * self._global_batch()
        bar.set_postfix(loss=f"{self.last_losses['loss']:.4f}", img_s=f"{images / max(train_seconds, 1e-9):.0f}",
                        refresh=False)
        bar.update(1)

    def _global_batch(self) -> int:
        return self.program.example_inputs[0].shape[0] * self.world_size

    def _periodic(self, *, final: bool) -> None:
        every = self.config.eval_every
        if self.eval_data is not None and (final or (every and self.step % every == 0)):
            self.history.append({"step": self.step, **self.evaluate()})
        every = self.config.checkpoint_every
        if self.config.checkpoint_dir is not None and (final or (every and self.step % every == 0)):
            self.save_checkpoint()

    def evaluate(self) -> dict[str, float]:
        """Accuracy and loss of the current program on the evaluation data, summed over all processes."""
        totals = _eval_totals(self.program, self.eval_data, self.device)
        if self.world_size > 1:
            dist.all_reduce(totals)
        return _summary(totals)

    def _release(self) -> None:
        """Give the program back as it came (mode, device), even when training stopped with an error."""
        self.program.train(self._initial_mode)
        self.program.module.to(self._home_device)
        if self._restore_teacher is not None:
            self._restore_teacher()

    def _statistics(self, start_step: int, train_seconds: float, eval_seconds: float, resumed_from) -> dict:
        window = self.log[-_STATS_WINDOW:]
        mean = {key: (sum(entry[key] for entry in window) / len(window) if window else float("nan"))
                for key in ("loss", "task", "kd", "feature")}
        return {
            "steps": self.step, "steps_run": self.step - start_step, "resumed_from": resumed_from,
            "epochs": self.epoch + (self.batch_in_epoch / len(self.data) if hasattr(self.data, "__len__") else 0),
            "train_loss": mean["loss"], "task_loss": mean["task"], "kd_loss": mean["kd"],
            "feature_loss": mean["feature"], "eval": list(self.history), "world_size": self.world_size,
            "seconds": train_seconds + eval_seconds, "train_seconds": train_seconds,
            "images_per_second": (self.step - start_step) * self._global_batch() / max(train_seconds, 1e-9),
        }

    # --- checkpoints -------------------------------------------------------------------------------
    def save_checkpoint(self) -> None:
        """Write program.pt2 and trainer_state.pt (rank 0; every rank contributes its RNG state)."""
        rng = [_rng_state()]
        if self.world_size > 1:
            rng = [None] * self.world_size
            dist.all_gather_object(rng, _rng_state())
        if self.rank == 0:
            self._write_checkpoint(Path(self.config.checkpoint_dir), rng)
        if self.world_size > 1:
            dist.barrier()  # nobody runs ahead of (or resumes from) a half-written checkpoint

    def _write_checkpoint(self, directory: Path, rng: list[dict]) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        snapshot = Program(copy.deepcopy(self.program.module), self.program.example_inputs, name=self.program.name,
                           analysis=copy.deepcopy(self.program.analysis),
                           output_shapes=list(self.program.output_shapes))
        snapshot.module.to(self.program.example_inputs[0].device)
        program_tmp, state_tmp = directory / "program.partial.pt2", directory / "trainer_state.partial.pt"
        snapshot.eval().save(program_tmp)
        state = {
            "format": _STATE_FORMAT, "step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
            "total_steps": self.total_steps, "optimizer_kind": self.config.optimizer, "world_size": self.world_size,
            "parameters": _parameter_shapes(self.program.module), "program_sha256": _sha256(program_tmp),
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(), "rng": rng,
            "log": self.log, "history": self.history,
        }
        torch.save(state, state_tmp)
        # Replace the program first: a crash between the two leaves a hash mismatch, which resume reports.
        os.replace(program_tmp, directory / PROGRAM_FILE)
        os.replace(state_tmp, directory / STATE_FILE)

    def _resume(self) -> int | None:
        """Load the checkpoint if there is one; return the step it was written at (None: no checkpoint)."""
        directory = Path(self.config.checkpoint_dir)
        program_path, state_path = directory / PROGRAM_FILE, directory / STATE_FILE
        if not program_path.exists() and not state_path.exists():
            return None
        if not (program_path.is_file() and state_path.is_file()):
            raise TrainingError(f"incomplete checkpoint in {directory}: need both {PROGRAM_FILE} and {STATE_FILE}")
        state = self._read_state(state_path)
        if _sha256(program_path) != state["program_sha256"]:
            raise TrainingError(f"{program_path} and {state_path} come from different saves (interrupted write?); "
                                "delete the directory to start over")
        try:
            program = Program.load(program_path)
        except PrunefxError as error:
            raise TrainingError(f"cannot resume from {directory}: {error}") from error
        self._check_state(state, program, directory)
        self.step = state["step"]
        self._attach(program)
        try:
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
        except (ValueError, KeyError, RuntimeError) as error:
            raise TrainingError(f"the optimizer state in {state_path} does not fit the program: "
                                f"{first_line(error)}") from error
        self.epoch, self.batch_in_epoch = state["epoch"], state["batch_in_epoch"]
        self.log, self.history = list(state["log"]), list(state["history"])
        _set_rng_state(state["rng"][self.rank])
        return self.step

    @staticmethod
    def _read_state(path: Path) -> dict:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # torch raises several unrelated types for damaged files
            raise TrainingError(f"cannot read {path} (corrupt checkpoint? delete it to start over): "
                                f"{first_line(error)}") from error
        if not isinstance(state, dict) or state.get("format") != _STATE_FORMAT:
            raise TrainingError(f"{path} is not a prunefx trainer state (format {_STATE_FORMAT})")
        return state

    def _check_state(self, state: dict, program: Program, directory: Path) -> None:
        expected = {"total_steps": self.total_steps, "optimizer_kind": self.config.optimizer,
                    "world_size": self.world_size}
        for key, value in expected.items():
            if state[key] != value:
                raise TrainingError(f"the checkpoint in {directory} was written with {key}={state[key]}, this run "
                                    f"has {key}={value}; resume with the same settings or use a new checkpoint_dir")
        if state["parameters"] != _parameter_shapes(program.module):
            raise TrainingError(f"the trainer state in {directory} does not match its program's parameters")
