"""Saving a `Trainer` to its checkpoint directory and resuming it from there.

What is saved: the program (checkpoint.py writes `program.pt2` and `trainer_state.pt`), the optimizer
and scheduler states, the step, the data position, every process's RNG state, the logs and the state of the
hooks the trainer carries (`carried`: prune_while_training's schedule, its cuts and scores). A run
resumed from them reaches the same weights as an uninterrupted one; a checkpoint written under other
settings (steps, optimizer, number of processes) is refused rather than continued differently.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

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

if TYPE_CHECKING:
    from prunefx.graph import Program
    from prunefx.passes.training.engine import Trainer


def save_checkpoint(trainer: Trainer) -> None:
    """Write program.pt2 and trainer_state.pt (rank 0; every rank contributes its RNG state)."""
    rng = [rng_state()]
    if trainer.world_size > 1:
        rng = [None] * trainer.world_size
        dist.all_gather_object(rng, rng_state())
    if trainer.rank == 0:
        _write_checkpoint(trainer, Path(trainer.config.checkpoint_dir), rng)
    if trainer.world_size > 1:
        dist.barrier()  # nobody runs ahead of (or resumes from) a half-written checkpoint


def _write_checkpoint(trainer: Trainer, directory: Path, rng: list[dict]) -> None:
    write_checkpoint(directory, trainer.program, {
        "step": trainer.step, "epoch": trainer.epoch, "batch_in_epoch": trainer.batch_in_epoch,
        "total_steps": trainer.total_steps, "optimizer_kind": trainer.config.optimizer,
        "world_size": trainer.world_size, "optimizer": trainer.optimizer.state_dict(),
        "scheduler": trainer.scheduler.state_dict(), "rng": rng, "log": trainer.log, "history": trainer.history,
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


def resume(trainer: Trainer) -> int | None:
    """Load the checkpoint if there is one; return the step it was written at (None: no checkpoint)."""
    directory = Path(trainer.config.checkpoint_dir)
    saved = read_checkpoint(directory)
    if saved is None:
        return None
    program, state = saved
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
    return trainer.step
