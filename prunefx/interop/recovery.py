"""Recovery in the caller's own training loop: the dense teacher's KD loss and CPD's prune-while-training.

`DistillationLoss` is the Trainer's loss and `PruneWhileTraining` the prune_while_training schedule, stepped
by a loop the user owns (plain PyTorch, Lightning, Ultralytics' trainer); after a cut the caller's optimizer
keeps its groups and its state, sliced to the channels kept. A worked loop and the details: see
docs/your-training-loop.md and docs/algorithms.md, 'Recovery in your own loop'.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
from collections.abc import Callable
from pathlib import Path

import torch

from prunefx.graph import Program, capture
from prunefx.graph.errors import PrunefxError
from prunefx.graph.model_state import hook_state_kept
from prunefx.graph.placement import module_device, move_program
from prunefx.graph.tensor_copies import tensor_copies
from prunefx.graph.training_flags import module_modes, set_module_modes
from prunefx.passes.core.config_checks import names_in
from prunefx.passes.prune_while_training import PruneWhileTrainingConfig, PruningSchedule, _target
from prunefx.passes.training.carried_state import carry_optimizer, cut_tracking_indices, named_tensors
from prunefx.passes.training.checkpoint import read_checkpoint, write_checkpoint
from prunefx.passes.training.config import CLASSIFICATION, TrainConfig
from prunefx.passes.training.losses import check_labels, logits_of, total_losses

log = logging.getLogger(__name__)


class DistillationLoss:
    """The recovery trainer's loss against a frozen dense `teacher` (a Program or an nn.Module).

    `loss = kd(student_output, inputs, labels)`: the teacher runs on `inputs` without gradients. The terms
    of the last call are in `last` ({"loss", "task", "kd", "feature"} as floats)."""

    def __init__(self, teacher: Program | torch.nn.Module, *, kd_weight: float = 0.9, temperature: float = 4.0,
                 task: str = CLASSIFICATION):
        # TrainConfig checks the settings with the trainer's messages; its step budget is not used here.
        self.config = TrainConfig(steps=1, kd_weight=kd_weight, temperature=temperature, task=task)
        self.teacher = frozen_copy(teacher)
        self.last: dict[str, float] = {}

    def __call__(self, student_output, inputs, labels: torch.Tensor | None = None) -> torch.Tensor:
        inputs = inputs if isinstance(inputs, (tuple, list)) else (inputs,)
        kept = contextlib.nullcontext()
        if isinstance(self.teacher, torch.nn.Module):
            # a copy sharing the closures of the user's hooks: what its runs leave there is put back; and it runs on
            # copies of the batch, which it may write into (a ReLU(inplace=True) first) and the caller trains on
            kept = hook_state_kept(self.teacher)
            inputs = tensor_copies(tuple(inputs))
        with torch.no_grad(), kept:
            teacher_output = self.teacher(*inputs)
        if labels is None and self.config.task == CLASSIFICATION and self.config.kd_weight < 1:
            raise PrunefxError("DistillationLoss needs the labels when kd_weight < 1 (the cross-entropy term)")
        if labels is not None and self.config.task == CLASSIFICATION:  # else an IndexError inside cross-entropy
            check_labels(tuple(logits_of(student_output).shape), labels)
        losses = total_losses(self.config, student_output, (), teacher_output, (), labels)
        self.last = {name: float(value.detach()) for name, value in losses.items()}
        return losses["loss"]


def frozen_copy(teacher) -> Callable:
    """An eval-mode copy without gradients: the caller's model (often the one being pruned) is left as it is."""
    if isinstance(teacher, Program):
        frozen = teacher.clone().eval()  # a graph's mode lives in its nodes
        for parameter in frozen.parameters():
            parameter.requires_grad_(False)
        return frozen
    if isinstance(teacher, torch.nn.Module):
        return copy.deepcopy(teacher).eval().requires_grad_(False)
    raise PrunefxError(f"the teacher must be a prunefx Program or a torch.nn.Module, not {type(teacher).__name__}")


class PruneWhileTraining:
    """CPD's schedule driven from the caller's loop: `after_backward()` after every backward pass,
    `maybe_cut(optimizer)` after every optimizer step. `model` is a Program (copied) or an nn.Module (captured
    here on `example_inputs`, a batch of the training batch size); exactly one of `macs` and `params`
    (the fraction of the dense model kept after the last of `events` cuts, one every `interval` steps)."""

    def __init__(self, model: Program | torch.nn.Module, example_inputs=None, *, macs: float | None = None,
                 params: float | None = None, events: int = 5, interval: int = 50, ranking: str = "global",
                 round_to: int = 8, max_ratio: float = 0.8, keep: tuple[str, ...] = (),
                 write_back: Callable[[Program], torch.nn.Module] | None = None,
                 initial_module: torch.nn.Module | None = None):
        if isinstance(keep, str):  # list("conv2d") would keep six nodes named by its letters
            raise PrunefxError(f"PruneWhileTraining: keep must be a list of node names, not the text {keep!r}")
        if write_back is not None and not callable(write_back):
            raise PrunefxError(f"PruneWhileTraining: write_back must be a function from a Program to a module, "
                               f"not {type(write_back).__name__}")
        options = PruneWhileTrainingConfig.parse({
            "macs": macs, "params": params, "prune_events": events, "interval": interval, "ranking": ranking,
            "round_to": round_to, "max_ratio": max_ratio, "keep": list(keep),
            "epochs": 1})  # the pass's checks; the training length is the caller's, so none that checks it
        if isinstance(model, Program):
            self.program = model.clone()  # trained and cut here: the caller's dense Program is left as found
        elif isinstance(model, torch.nn.Module):
            self.program = capture(model, example_inputs, name=type(model).__name__)
        else:
            raise PrunefxError(f"PruneWhileTraining needs a prunefx Program or a torch.nn.Module, "
                               f"not {type(model).__name__}")
        # refused now, not at the first cut `interval` steps into the caller's training
        names_in("PruneWhileTraining", "keep", options.keep, {node.name for node in self.program.graph.nodes},
                 what=f"a node of {self.program.name}")
        self.schedule = PruningSchedule(self.program, _target(options), options)
        self.step = 0
        # With `write_back` (e.g. `lambda program: prunefx.to_module(program, model)`) the caller trains an
        # eager module of their own classes, written back from the graph at the start and after every cut.
        if initial_module is not None and write_back is None:
            raise PrunefxError("initial_module is the module write_back writes into: give write_back too")
        self.write_back = write_back
        self.eager = None
        if write_back is not None:  # before the first cut the caller's dense module is the graph's view
            start = initial_module if initial_module is not None else (
                copy.deepcopy(model) if not isinstance(model, Program) else write_back(self.program))
            _check_parameter_names(start, self.program)
            self.eager = start
            self.schedule.restart_scores(self.program.module, gradients_from=start)  # the caller's module is scored

    @property
    def module(self) -> torch.nn.Module:
        """The model to train now (the graph, or the written-back module); a new object after every cut."""
        return self.program.module if self.eager is None else self.eager

    @property
    def events(self) -> list[dict]:
        """One record per cut done: step, target kept, MACs, parameters, channels removed."""
        return self.schedule.done

    @property
    def finished(self) -> bool:
        return len(self.schedule.done) >= self.schedule.events

    def _follow_the_module(self) -> None:
        """The caller moved the graph it trains (`session.module.cuda()`): the Program follows before a cut runs it,
        its example inputs and the devices its graph names (torch.arange(..., device=cpu)) with it."""
        trained = module_device(self.program.module)
        named = next((x.device for x in self.program.example_inputs if isinstance(x, torch.Tensor)), trained)
        if named != trained:
            move_program(self.program, trained, source=named)

    def train(self, mode: bool = True) -> PruneWhileTraining:
        self.program.train(mode)
        if self.eager is not None:
            self.eager.train(mode)
        return self

    def eval(self) -> PruneWhileTraining:
        return self.train(False)

    def after_backward(self, *, loss_scale: float = 1.0) -> None:
        """Accumulate the Fisher scores from the gradients now on the parameters (before optimizer.step).
        `loss_scale`: under mixed precision, the scale the loss was multiplied by (`scaler.get_scale()`) where the
        gradients are read before `scaler.unscale_`."""
        self.schedule.accumulate(loss_scale=loss_scale)

    def maybe_cut(self, optimizer: torch.optim.Optimizer | None = None, *, train_loss: float | None = None) -> bool:
        """Count one optimizer step; on the schedule's steps cut channels and give `optimizer` the new
        parameters with its state sliced to the channels kept. Returns whether a cut happened. A cut that fails
        (a write-back refused) changes nothing but the step count: model, optimizer and events stay as they were."""
        self.step += 1
        if not self.schedule.due(self.step):
            return False
        self._follow_the_module()
        before = dict(self.module.named_parameters())
        graph_modes = self.program.modes()
        if self.eager is not None:
            _copy_by_name(self.eager, self.program.module)  # the graph holds what the caller trained
        events = len(self.schedule.done)
        try:
            pruned, kept = cut_tracking_indices(
                self.program, lambda clone: self.schedule.cut(clone, self.step, train_loss=train_loss))
            pruned.restore_modes(graph_modes)  # each layer's own mode: a frozen batch norm stays frozen
            eager = None if self.eager is None else self._written_back(pruned, module_modes(self.eager))
        except BaseException:
            del self.schedule.done[events:]
            raise
        self.program, self.eager = pruned, eager
        self.schedule.restart_scores(pruned.module, gradients_from=eager)
        if optimizer is not None:
            carry_optimizer(optimizer, before, dict(self.module.named_parameters()), kept)
        if self.finished:
            self._warn_if_short()
        return True

    def _warn_if_short(self) -> None:
        """After the last cut: say where the width floors (max_ratio of each dense width) stopped it short of the
        target, which the prune_while_training pass refuses under `strict` and a caller's loop would not see."""
        target = self.schedule.statistics(self.program)["target"]
        if not target["met"]:
            log.warning("PruneWhileTraining's last cut left %s=%.3f of the dense model, short of the target %g: the "
                        "width floors max_ratio sets stop it there", target["kind"], target["achieved"],
                        target["fraction"])

    def _written_back(self, program: Program, modes: dict[str, bool]) -> torch.nn.Module:
        """`write_back(program)`, checked, each layer in the mode `modes` names."""
        module = self.write_back(program)
        _check_parameter_names(module, program)
        set_module_modes(module, modes, program.training)
        return module

    def statistics(self) -> dict:
        """The pass's statistics: target, achieved fraction, MACs and parameters before/after, events."""
        return self.schedule.statistics(self.program)

    # ---- saving and resuming ------------------------------------------------------------------------

    def save(self, folder: str | os.PathLike) -> None:
        """Write what resuming needs into `folder`: the graph as trained and cut so far (program.pt2), the step,
        the cuts' records and the scores since the last cut (trainer_state.pt), written as the recovery trainer's
        checkpoints are (a save cut short leaves the previous one whole). Save your optimizer's state_dict()
        beside it."""
        if self.eager is not None:
            _copy_by_name(self.eager, self.program.module)  # the graph holds what the caller trained
        write_checkpoint(Path(folder), self.program, {"session": {
            "step": self.step, "dense": self._dense_cost(), **self.schedule.checkpoint_state()}})

    def load(self, folder: str | os.PathLike) -> PruneWhileTraining:
        """Go on from `save`'s folder: this session, made again from the same dense model and settings, takes the
        graph, step, cuts and scores saved, on the device its graph is on. `module` is then the saved graph (or
        its write-back) in eval mode: call `train()`, build the optimizer on `module`'s parameters and give it
        its saved state_dict()."""
        read = read_checkpoint(Path(folder))
        saved = None if read is None else read[1].get("session")
        if saved is None:
            raise PrunefxError(f"{folder} holds no PruneWhileTraining.save: nothing to resume")
        dense = self._dense_cost()
        if saved["dense"] != dense:
            raise PrunefxError(f"{folder} was saved by a session whose dense model has {saved['dense']['macs']} MACs "
                               f"and {saved['dense']['params']} parameters, this one's has {dense['macs']} and "
                               f"{dense['params']}: make it from the same dense model, not the pruned one")
        program = move_program(read[0], module_device(self.program.module))
        eager = None if self.eager is None else self._written_back(program, {})  # eval, as the graph
        self.schedule.restore(saved, program.module, where=str(folder), gradients_from=eager)
        self.program, self.eager, self.step = program, eager, int(saved["step"])
        return self

    def _dense_cost(self) -> dict[str, int]:
        return {"macs": int(self.schedule.before.macs), "params": int(self.schedule.before.params)}


def _check_parameter_names(module: torch.nn.Module, program: Program) -> None:
    """The module trained must hold the graph's parameters by name: scores and cuts find them that way."""
    missing = {name for name, _ in program.module.named_parameters()} - dict(module.named_parameters()).keys()
    if missing:
        raise PrunefxError(f"the written-back module lacks the graph's parameter {sorted(missing)[0]}: "
                           "write_back must return a module with the graph's parameter names")


def _copy_by_name(source: torch.nn.Module, target: torch.nn.Module) -> None:
    """Copy `source`'s parameters and buffers into `target`'s tensors of the same names."""
    tensors = dict(named_tensors(target))
    with torch.no_grad():
        for name, tensor in named_tensors(source):
            if name in tensors:
                tensors[name].copy_(tensor)
