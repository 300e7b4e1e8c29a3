"""Recovery training with knowledge distillation: the engine behind the `distill` pass.

A `Trainer` trains a Program's GraphModule against a frozen teacher on the losses of losses.py; hooks see
the gradients of the whole loss and may replace the Program (channels removed) mid-run. It also runs
distributed under torchrun and resumes from checkpoints. Distributed mode, checkpoints, the package's
layout and the non-goals: see docs/algorithms.md, 'The trainer'.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable, Sequence, Sized
from pathlib import Path
from typing import Any, Protocol

import torch
from tqdm.auto import tqdm

from prunefx.graph import Program
from prunefx.graph.full_float32 import float32_as_found
from prunefx.graph.grad_mode import gradients_on
from prunefx.graph.input_batches import as_program_inputs
from prunefx.graph.progress import bar_or_lines
from prunefx.passes.training.checkpoint import PROGRAM_FILE, STATE_FILE
from prunefx.passes.training.checkpoint_lock import checkpoint_dir_held
from prunefx.passes.training.config import (
    DETECTION,
    OPTIMIZERS,
    FeaturePair,
    TrainConfig,
    TrainingError,
    warmup_text,
)
from prunefx.passes.training.data import accuracy_summary, eval_totals, evaluate, shard_batches, split_batch
from prunefx.passes.training.losses import (
    IGNORE_LABEL,
    check_labels,
    detection_kd_loss,
    feature_loss,
    kd_loss,
    logits_of,
    logits_shape,
    run_tapped,
    tap_outputs,
    task_loss,
    total_losses,
)
from prunefx.passes.training.placement import Placement
from prunefx.passes.training.precision import autocast, check_supported
from prunefx.passes.training.processes import (
    current_during,
    distributed_world,
    leave_process_group,
    resolve_device,
    summed_over_processes,
)
from prunefx.passes.training.random_state import random_state_kept, rng_state, seed_training, set_rng_state
from prunefx.passes.training.resume import parameter_norms, resume, save_checkpoint
from prunefx.passes.training.schedule import lr_factor, make_optimizer, make_scheduler
from prunefx.passes.training.statistics import fit_statistics
from prunefx.passes.training.teacher import frozen_teacher

# The trainer's public names, importable from here as before the module was split.
__all__ = [
    "IGNORE_LABEL", "OPTIMIZERS", "PROGRAM_FILE", "STATE_FILE", "FeaturePair", "TrainConfig", "Trainer",
    "TrainingError", "detection_kd_loss", "evaluate", "feature_loss", "kd_loss", "logits_of", "lr_factor",
    "make_scheduler", "tap_outputs", "task_loss",
]

# --- the trainer ---------------------------------------------------------------------------------

AfterBackward = Callable[["Trainer"], None]
AfterStep = Callable[["Trainer", int], None]
_END = object()  # what next() returns for an epoch that ran out while its trained batches were skipped


class Carried(Protocol):
    """A hook's state that a checkpoint keeps (passes/training/resume.py): a pruning schedule's cuts and scores."""

    def checkpoint_state(self) -> dict: ...

    def resume_state(self, state: dict, trainer: Trainer) -> None: ...


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
                 after_backward: Sequence[AfterBackward] = (), after_step: Sequence[AfterStep] = (),
                 carried: dict[str, Carried] | None = None, first_epoch: int = 0):
        self.config = config
        self.after_backward, self.after_step = list(after_backward), list(after_step)
        self.carried = dict(carried or {})  # hooks whose state a checkpoint keeps, by name
        self.device = resolve_device(config, program.module)
        self.rank, self.world_size, self._owns_process_group = distributed_world(self.device)
        try:
            self._set_up(program, teacher, data, eval_data, first_epoch)
        except BaseException:  # refused: a process group made for this run is not left behind
            self._leave_process_group()
            raise

    def _set_up(self, program: Program, teacher, data: Iterable, eval_data: Iterable | None, first_epoch: int) -> None:
        config = self.config
        self.data = shard_batches(data, self.rank, self.world_size)
        # A detector is not evaluated here: eval_totals' top-1 accuracy would argmax over box coordinates.
        evaluates = eval_data is not None and config.task != DETECTION
        if evaluates and isinstance(eval_data, Sized) and len(eval_data) == 0:
            raise TrainingError("the evaluation data holds no batches: give some, or none (eval_data=None)")
        self.eval_data = shard_batches(eval_data, self.rank, self.world_size) if evaluates else None
        self.total_steps = self._total_steps()
        if config.warmup_steps >= self.total_steps > 0:
            raise TrainingError(warmup_text(config.warmup_steps, self.total_steps, config.lr))
        self.needs_teacher = config.kd_weight > 0 or bool(config.feature_pairs)
        if self.needs_teacher and teacher is None:
            raise TrainingError("distillation needs a teacher (or set kd_weight=0 without feature_losses)")
        self._teacher: Any = frozen_teacher(teacher, config, self.device, program) if self.needs_teacher else None
        self.first_epoch = first_epoch  # where the data's epochs start: after those an earlier pass went through
        self.step, self.epoch, self.batch_in_epoch = 0, first_epoch, 0
        self.epoch_rng: dict | None = None  # the random state the epoch's data order was drawn from (_batches)
        self.log: list[dict[str, float]] = []
        self.history: list[dict[str, float]] = []
        self.last_losses: dict[str, float] = {}
        self.given_parameters = parameter_norms(program.module)  # which run a checkpoint belongs to (resume.py)
        self.teacher_parameters = (parameter_norms(getattr(teacher, "module", teacher)) if self.needs_teacher
                                   else [])  # and which teacher it distilled from
        check_supported(config.precision, self.device)
        self._placement = Placement(program, self.device, self.world_size,
                                    [pair.student for pair in config.feature_pairs], config.precision)
        self._placed = False
        self._labels_checked = False
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

    def _attach(self, program: Program) -> None:
        """Train `program` from the current step on: train mode, device, DDP, a new optimizer."""
        self.program = program
        self._place()
        self.optimizer = make_optimizer(program.module, self.config)
        self.scheduler = make_scheduler(self.optimizer, warmup_steps=self.config.warmup_steps,
                                        total_steps=self.total_steps, start_step=self.step)

    def _place(self) -> None:
        """The program trained from here: in train mode on the device, tapped, under DDP (placement.py)."""
        self._student, self._model = self._placement.place(self.program)
        self._placed = True

    def replace_program(self, program: Program) -> None:
        """Continue training `program` instead (e.g. after channels were removed from the current one):
        new parameters, a new optimizer (momentum restarts), the learning rate where the schedule is.
        Call it from an `after_step` hook (or between fits), not between backward and the optimizer step."""
        previous = self.program
        self._attach(program)
        if previous is self._placement.given and program is not previous:  # the caller's program, no longer trained here
            self._placement.send_home(previous)

    # --- training ----------------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        """Train to `total_steps` (resuming from the checkpoint when asked) and return statistics. The run
        draws from its own seed; the caller's random state is left as found."""
        # the first process holds the checkpoint directory: another run's checkpoints would replace this one's
        held = Path(self.config.checkpoint_dir) if self.config.checkpoint_dir is not None and self.rank == 0 else None
        with random_state_kept(self.device), current_during(self.device), contextlib.ExitStack() as stack:
            try:  # gradients on, whatever the caller's grad mode (refused in inference mode)
                stack.enter_context(gradients_on("training"))
                stack.enter_context(checkpoint_dir_held(held))
            except BaseException:  # refused: the program goes back as it came, as after any fit
                self.release()
                raise
            try:
                return self._fit()
            finally:  # stopped or done: a process group made for this run ends with it
                self._leave_process_group()

    def _fit(self) -> dict[str, Any]:
        if not self._placed:  # a fit before this one gave the program back (release)
            self._place()
        try:
            resumed_from = resume(self) if self.config.resume else None
        except BaseException:  # a checkpoint refused: the program goes back as it came
            self.release()
            raise
        if resumed_from is None:
            seed_training(self.config.seed + self.first_epoch * self.world_size + self.rank, self.device)
        start_step, train_seconds, eval_seconds = self.step, 0.0, 0.0
        # on a terminal unless the config says otherwise (graph/progress.py); other ranks never draw
        bar = bar_or_lines(self.config.progress if self.rank == 0 else False, make=tqdm, total=self.total_steps,
                             initial=self.step, unit="step")
        batches = self._batches()
        try:
            while self.step < self.total_steps:
                started = time.perf_counter()
                with float32_as_found():  # TF32 where the process allows it, inside prunefx's full float32 work
                    self._train_step(next(batches))
                train_seconds += time.perf_counter() - started
                self._show(bar, train_seconds, start_step)
                started = time.perf_counter()
                self._periodic(final=self.step == self.total_steps)
                eval_seconds += time.perf_counter() - started
        except KeyboardInterrupt as interrupt:
            # say how to go on, in the interrupt's one line: a note, as Python 3.11's add_note keeps it (3.10 has no
            # add_note, and the command line reads __notes__ on either)
            if self.config.checkpoint_dir is not None:
                notes = [*getattr(interrupt, "__notes__", ()), self._where_to_go_on()]
                interrupt.__notes__ = notes  # type: ignore[attr-defined]
            raise
        finally:
            bar.close()
            self.release()
        return fit_statistics(self, start_step, train_seconds, eval_seconds, resumed_from)

    def _where_to_go_on(self) -> str:
        """The interrupt's note: how to continue, when a checkpoint was written; else that none was."""
        directory = Path(self.config.checkpoint_dir)
        if (directory / PROGRAM_FILE).is_file():
            return (f"training checkpoints are in {directory}: run the same command with `resume: true` in the "
                    "pass's config to continue")
        return (f"no training checkpoint was written to {directory} yet (checkpoint_every: "
                f"{self.config.checkpoint_every}; 0 writes one at the end only)")

    def _train_step(self, batch) -> None:
        inputs, labels = self._on_device(batch)
        checking = not self._labels_checked and self.config.task != DETECTION and labels is not None  # once: it syncs
        if checking:  # before the forward, which would move the batch norms' statistics of a refused run
            shape = logits_shape(self.program.output_shapes, self._student.out_spec)
            if shape is not None:
                check_labels(shape, labels)
                self._labels_checked = True
        teacher_output, teacher_features = (None, ())
        with autocast(self.config.precision, self.device):  # the backward pass runs in the forward's dtypes
            if self.needs_teacher:
                with torch.no_grad():
                    teacher_output, teacher_features = self._teacher(inputs)
            output, features = run_tapped(self._model, self._student.out_spec, inputs)
            if checking and not self._labels_checked:  # outputs the shapes could not stand for (an int among them)
                check_labels(tuple(logits_of(output).shape), labels)
                self._labels_checked = True
            losses = total_losses(self.config, output, features, teacher_output, teacher_features, labels)
        self.optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        for hook in self.after_backward:
            hook(self)
        if self.config.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.program.module.parameters(), self.config.max_grad_norm)
        lr = self.optimizer.param_groups[0]["lr"]
        logged = self._logged(losses)
        _refuse_divergence(logged["loss"], self.step + 1, lr)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)  # release gradient memory before hooks and evaluation
        self.step += 1
        self.last_losses = logged
        self.log.append({"step": self.step, **self.last_losses, "lr": lr})
        for step_hook in self.after_step:
            step_hook(self, self.step)

    def _logged(self, losses: dict[str, torch.Tensor]) -> dict[str, float]:
        """The step's losses as floats, of the global batch when distributed (every rank reads the same)."""
        values = torch.stack([value.detach() for value in losses.values()])
        values = summed_over_processes(values, self.world_size) / self.world_size  # the global batch's loss
        return dict(zip(losses, values.tolist()))

    def _on_device(self, batch) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        inputs, labels = split_batch(batch)
        expected = [tuple(x.shape) for x in self.program.example_inputs]
        if [tuple(x.shape) for x in inputs] != expected:
            per_process = " per process" if self.world_size > 1 else ""
            raise TrainingError(f"a batch of shapes {[tuple(x.shape) for x in inputs]}{per_process} does not match "
                                f"the program's static input shapes {expected}: capture the program with the "
                                f"training batch size{' divided by the number of processes' if per_process else ''}")
        overlap = self.device.type == "cuda"  # copies from pinned host memory may overlap the previous step
        return (as_program_inputs(inputs, self.program.example_inputs, self.device, non_blocking=overlap),
                labels.to(self.device, non_blocking=overlap))

    def _batches(self):
        """Training batches from the saved position on, epoch after epoch."""
        while True:
            if hasattr(self.data, "__len__") and self.batch_in_epoch >= len(self.data) > 0:
                self.epoch, self.batch_in_epoch = self.epoch + 1, 0
            if hasattr(self.data, "set_epoch"):
                self.data.set_epoch(self.epoch)
            seen_any = False
            for batch in self._epoch_from_its_position():
                seen_any = True
                self.batch_in_epoch += 1
                yield batch
            if not seen_any and self.batch_in_epoch == 0:
                raise TrainingError(f"the training data yielded no batches in epoch {self.epoch}; pass a list or "
                                    "a loader that can be iterated again, not a one-shot generator")
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0

    def _epoch_from_its_position(self):
        """This epoch's batches from `batch_in_epoch` on. A loader draws its order (and its workers' seeds) from
        torch's generator when iterated: a resumed epoch is drawn again from the state its start drew from, the
        batches already trained on are skipped, and the random state goes on from where the checkpoint left it."""
        resumed_midway = self.batch_in_epoch > 0 and self.epoch_rng is not None
        now = rng_state()
        if resumed_midway:
            set_rng_state(self.epoch_rng)
        else:
            self.epoch_rng = now
        batches = iter(self.data)
        for _ in range(self.batch_in_epoch):
            if next(batches, _END) is _END:
                return
        if resumed_midway:
            set_rng_state(now)
        yield from batches

    def epochs_begun(self) -> int:
        """The epochs of the data this run began, counted from the first: where a later training pass starts."""
        return self.epoch + (self.batch_in_epoch > 0)

    def _show(self, bar, train_seconds: float, start_step: int) -> None:
        images = (self.step - start_step) * self.global_batch()
        bar.set_postfix(loss=f"{self.last_losses['loss']:.4f}", img_s=f"{images / max(train_seconds, 1e-9):.0f}",
                        refresh=False)
        bar.update(1)

    def global_batch(self) -> int:
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
        if self.eval_data is None:
            raise TrainingError("no evaluation data (a detector is never evaluated by the trainer: it scores "
                                "top-1 classes; use prunefx.dense_tasks.evaluate_dense for mAP)")
        return accuracy_summary(summed_over_processes(eval_totals(self.program, self.eval_data, self.device),
                                                      self.world_size))

    def _leave_process_group(self) -> None:
        if self._owns_process_group:
            leave_process_group()
            self._owns_process_group = False

    def release(self) -> None:
        """Give the program back as it came (modes, device): after every fit, even one stopped by an error, and
        by a caller that refuses to fit after all."""
        self._placement.send_home(self.program)
        self._placed = False

    def save_checkpoint(self) -> None:
        """Write program.pt2 and trainer_state.pt (passes/training/resume.py)."""
        save_checkpoint(self)


def _refuse_divergence(loss: float, step: int, lr: float) -> None:
    """Stop before a non-finite loss reaches the weights: an optimizer step on it would leave every weight NaN,
    and a finished run would hand back a model that answers one class whatever its input."""
    if not math.isfinite(loss):
        raise TrainingError(f"training diverged at step {step}: the loss is {loss} at lr {lr:g}; the weights are "
                            "those before this step. Lower lr or set max_grad_norm (a network whose batch norms "
                            "were folded, by merge_blocks or fold_batchnorm, often needs one of them)")
