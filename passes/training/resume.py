"""Saving a `Trainer` to its checkpoint directory and resuming it from there.

What is saved: the program (checkpoint.py writes `program.pt2` and `trainer_state.pt`), the optimizer
and scheduler states, the step, the data position, every process's RNG state (and the one its epoch's data order
was drawn from: a DataLoader shuffles when it is iterated), the logs and the state of the
hooks the trainer carries (`carried`: prune_while_training's schedule, its cuts and scores). A run
resumed from them reaches the same weights as an uninterrupted one; a checkpoint written by another run (other
settings: steps, optimizer, processes, learning rate, distillation, seed; or another model, or other weights
given) is refused rather than continued differently. The data are not compared, only their length (the steps).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

from prunefx.graph.errors import first_line
from prunefx.passes.training.checkpoint import (
    STATE_FILE,
    check_settings,
    read_checkpoint,
    write_checkpoint,
)
from prunefx.passes.training.config import TrainingError
from prunefx.passes.training.random_state import rng_state, set_rng_state

# The settings that shape a run's training; steps, optimizer and processes are checked on their own (check_settings).
TRAJECTORY = ("lr", "momentum", "weight_decay", "warmup_steps", "temperature", "kd_weight", "max_grad_norm", "seed",
              "task")

if TYPE_CHECKING:
    from prunefx.graph import Program
    from prunefx.passes.training.engine import Trainer


def save_checkpoint(trainer: Trainer) -> None:
    """Write program.pt2 and trainer_state.pt (rank 0; every rank contributes its RNG state)."""
    rng, epoch_rng = [rng_state()], [trainer.epoch_rng]
    if trainer.world_size > 1:
        rng, epoch_rng = [None] * trainer.world_size, [None] * trainer.world_size
        dist.all_gather_object(rng, rng_state())
        dist.all_gather_object(epoch_rng, trainer.epoch_rng)
    if trainer.rank == 0:
        _write_checkpoint(trainer, Path(trainer.config.checkpoint_dir), rng, epoch_rng)
    if trainer.world_size > 1:
        dist.barrier()  # nobody runs ahead of (or resumes from) a half-written checkpoint


def _write_checkpoint(trainer: Trainer, directory: Path, rng: list[dict], epoch_rng: list[dict | None]) -> None:
    write_checkpoint(directory, trainer.program, {
        "run": run_identity(trainer), "step": trainer.step, "epoch": trainer.epoch, "batch_in_epoch": trainer.batch_in_epoch,
        "total_steps": trainer.total_steps, "optimizer_kind": trainer.config.optimizer,
        "world_size": trainer.world_size, "optimizer": trainer.optimizer.state_dict(),
        "scheduler": trainer.scheduler.state_dict(), "rng": rng, "epoch_rng": epoch_rng, "log": trainer.log,
        "history": trainer.history,
        "carried": {name: hook.checkpoint_state() for name, hook in trainer.carried.items()},
    })


def _resume_carried(trainer: Trainer, saved: dict, directory: Path) -> None:
    """The hooks' state (a pruning schedule's cuts and scores) back, each by its name; a checkpoint written by a
    run with other hooks is refused: resumed without its cuts, a schedule would cut the model again."""
    if set(saved) != set(trainer.carried):
        said = ", ".join(sorted(saved)) or "no hook state"
        raise TrainingError(f"the checkpoint in {directory} was written by a run with {said}, this run has "
                            f"{', '.join(sorted(trainer.carried)) or 'none'}; resume the same pass or use a new "
                            "checkpoint_dir")
    for name, hook in trainer.carried.items():
        hook.resume_state(saved[name], trainer)


def _keep_callers_inputs(saved: Program, current: Program) -> None:
    """A checkpoint keeps only its inputs' shapes (a loaded Program draws random ones): where they are the trained
    program's shapes and dtypes, the saved program takes that program's own inputs (copies), the caller's data."""
    if [(x.shape, x.dtype) for x in saved.example_inputs] == [(x.shape, x.dtype) for x in current.example_inputs]:
        saved.example_inputs = tuple(x.detach().clone() for x in current.example_inputs)


def run_identity(trainer: Trainer) -> dict:
    """What a checkpoint must share with the run that resumes it, beyond steps, optimizer and processes: the
    settings that shape the training, and the program the trainer was given (its parameters' names, shapes and
    norms: another model, or the same one with other weights, is another run)."""
    config = trainer.config
    settings = {key: getattr(config, key) for key in TRAJECTORY}
    settings["feature_losses"] = [[pair.student, pair.teacher, pair.weight] for pair in config.feature_pairs]
    return {"settings": settings, "given": trainer.given_parameters, "teacher": trainer.teacher_parameters}


def parameter_norms(module: torch.nn.Module) -> list[list]:
    """[name, shape, L2 norm] of every parameter: a fingerprint that a rerun of the same command reproduces."""
    with torch.no_grad():
        return [[name, list(p.shape), float(torch.linalg.vector_norm(p.detach().float()))]
                for name, p in module.named_parameters()]


def _check_identity(saved: dict | None, current: dict, directory: Path) -> None:
    """Refuse a checkpoint of another run (module docstring): a setting that differs is named, and so is a
    program given with other parameters. Norms are compared to 1e-4: reruns may differ in the last bits."""
    if saved is None or "settings" not in saved:
        raise TrainingError(f"the checkpoint in {directory} was written by another version of prunefx (it does "
                            "not say which run wrote it); delete it or use a new checkpoint_dir")
    for key, value in current["settings"].items():
        if saved["settings"].get(key) != value:
            raise TrainingError(f"the checkpoint in {directory} was written with {key}={saved['settings'].get(key)}, "
                                f"this run has {key}={value}; resume with the same settings or use a new "
                                "checkpoint_dir")
    _check_same_parameters(saved["given"], current["given"], directory, "model")
    if "teacher" in saved:  # checkpoints from before teachers were compared say nothing of theirs
        _check_same_parameters(saved["teacher"], current["teacher"], directory, "teacher")


def _check_same_parameters(given: list, now: list, directory: Path, what: str) -> None:
    """Refuse parameters (parameter_norms) of another `what`, or of the same one with other weights."""
    if [entry[:2] for entry in given] != [entry[:2] for entry in now]:
        raise TrainingError(f"the checkpoint in {directory} was written for another {what} (other parameters); "
                            f"resume with the same {what} or use a new checkpoint_dir")
    for (name, _, norm), (_, _, norm_now) in zip(given, now):
        if not math.isclose(norm, norm_now, rel_tol=1e-4, abs_tol=1e-6):
            raise TrainingError(f"the checkpoint in {directory} was written for the same {what} with other weights "
                                f"({name}); resume with the same weights or use a new checkpoint_dir")


def resume(trainer: Trainer) -> int | None:
    """Load the checkpoint if there is one; return the step it was written at (None: no checkpoint)."""
    directory = Path(trainer.config.checkpoint_dir)
    saved = read_checkpoint(directory)
    if saved is None:
        return None
    program, state = saved
    if "total_steps" not in state:
        raise TrainingError(f"{directory} holds no trainer checkpoint (a PruneWhileTraining.save folder?): give "
                            "the trainer its own checkpoint_dir")
    _check_identity(state.get("run"), run_identity(trainer), directory)
    check_settings(state, {"total_steps": trainer.total_steps, "optimizer_kind": trainer.config.optimizer,
                           "world_size": trainer.world_size}, directory)
    trainer.step = state["step"]
    _keep_callers_inputs(program, trainer.program)
    trainer.replace_program(program)  # a new optimizer on the saved parameters, the schedule at `step`
    try:
        trainer.optimizer.load_state_dict(state["optimizer"])
        trainer.scheduler.load_state_dict(state["scheduler"])
    except (ValueError, KeyError, RuntimeError) as error:
        raise TrainingError(f"the optimizer state in {directory / STATE_FILE} does not fit the program: "
                            f"{first_line(error)}") from error
    _resume_carried(trainer, state.get("carried", {}), directory)
    trainer.epoch, trainer.batch_in_epoch = state["epoch"], state["batch_in_epoch"]
    trainer.log, trainer.history = list(state["log"]), list(state["history"])
    set_rng_state(state["rng"][trainer.rank])
    # what the epoch's order was drawn from (older checkpoints: not kept, the epoch is drawn from the state above)
    trainer.epoch_rng = state.get("epoch_rng", [None] * trainer.world_size)[trainer.rank]
    return trainer.step
