"""prune_while_training: CPD's schedule — remove channels step by step while the model distils.

Fisher channel importance accumulates from the gradients the trainer already computes; every `interval` steps
remove_channels cuts to the next point of a geometric schedule, ranking channels globally. Why the whole
loss drives the importance and how this differs from the released CPD code: see docs/algorithms.md,
'prune_while_training'.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from prunefx.graph import Program, count
from prunefx.graph.analysis_record import TrainingRecord
from prunefx.graph.channels.attention_dims import floor_names
from prunefx.graph.channels.groups import find_channel_groups
from prunefx.graph.channels.importance import FisherAccumulator, group_importance
from prunefx.graph.channels.selection import TARGET_KINDS, TARGET_TOLERANCE, Target
from prunefx.graph.errors import PrunefxError
from prunefx.passes.core import config_checks as checks
from prunefx.passes.core.contract import graph_pass
from prunefx.passes.core.pass_config import given, option
from prunefx.passes.core.pipeline import run_inner
from prunefx.passes.core.registry import shipped_pass
from prunefx.passes.core.result import Result
from prunefx.passes.distill import epochs_trained, keep_what_records_ask
from prunefx.passes.removal.channels_removed import ChannelsRemoved
from prunefx.passes.remove_channels import remove_channels
from prunefx.passes.rewrites.sparse_masks import refuse_sparse_weights
from prunefx.passes.training.carried_state import carry_state, cut_tracking_indices
from prunefx.passes.training.config import TrainingError, TrainingPassConfig
from prunefx.passes.training.engine import TrainConfig, Trainer

# A width ratio is not a cost: the schedule needs a quantity it can measure between events.
_TARGETS = ("macs", "params")


@dataclass
class PruneWhileTrainingConfig(TrainingPassConfig):
    """The trainer's and the caller's fields (TrainingPassConfig) with the pruning schedule's."""

    owner: ClassVar[str] = "prune_while_training"

    macs: float | None = option(help="fraction of the MACs to keep at the end")
    params: float | None = option(help="fraction of the parameters to keep at the end")
    channels: float | None = option(help="not a target here: a width ratio is not a cost", cli=False)
    prune_events: int = option(5, help="how many cuts reach the target")
    interval: int = option(50, help="training steps between cuts")
    ranking: str = option("global", help="global or local ranking of channels", choices=("global", "local"))
    round_to: int = option(8, help="keep every width a multiple of N")
    max_ratio: float = option(0.8, help="largest fraction of one group removed")
    keep: list[str] = option([], help="graph node whose channels must stay")
    strict: bool = option(True, help="fail when the target is missed by more than 3 %")
    optimizer_state: str = option("carry", help="after a cut: carry the optimizer's state sliced to the channels "
                                  "kept, or restart it", choices=("carry", "restart"))

    def check(self) -> None:
        super().check()
        owner = self.owner
        _target(self)
        checks.integer(owner, "prune_events", self.prune_events, minimum=1)
        checks.integer(owner, "interval", self.interval, minimum=1)
        checks.integer(owner, "round_to", self.round_to, minimum=1)
        checks.number(owner, "max_ratio", self.max_ratio, low=0.0, high=1.0, high_open=True)
        if self.steps is not None and self.steps < self.prune_events * self.interval:  # with epochs: once data is
            raise PrunefxError(events_text(self.steps, self.prune_events, self.interval))


def events_text(steps: int, events: int, interval: int) -> str:
    """Why a run of `steps` cannot hold the pruning schedule."""
    return (f"prune_while_training: {steps} training steps cannot hold {events} pruning events every {interval} "
            f"steps (needs at least {events * interval})")


@shipped_pass
@graph_pass(config=PruneWhileTrainingConfig, in_place=True, reads=("sparsity", "linearize", "kept_channels", "training"),
            writes=("kept_channels", "training"))
def prune_while_training(program: Program, /, *, config: dict | None = None) -> Result:
    if given(config, "data") is None:  # before the other checks: without data nothing else matters
        raise PrunefxError("prune_while_training needs training batches: config['data']")
    options = PruneWhileTrainingConfig.parse(config)
    refuse_sparse_weights(program, "prune_while_training", "removing channels")
    train_config = TrainConfig.from_dict(TrainConfig.fields_of(options), owner="prune_while_training")
    target = _target(options)
    schedule = PruningSchedule(program, target, options)
    teacher = options.teacher or program.clone().eval()
    trainer = Trainer(program, teacher=teacher, data=options.data, config=train_config,
                      eval_data=options.eval_data, after_backward=[schedule.accumulate],
                      after_step=[schedule.maybe_prune], carried={"pruning_schedule": schedule},
                      first_epoch=epochs_trained(program))
    keep_what_records_ask(trainer, program)  # blends raised while training, as distill does
    if trainer.total_steps < schedule.last_step:
        trainer.release()  # the Trainer took the program to train: back as found before refusing
        raise PrunefxError(events_text(trainer.total_steps, schedule.events, schedule.interval))
    training = trainer.fit()
    if trainer.program is not program:  # resumed: the Trainer trained the checkpoint's program, ours takes it on
        program.adopt(trainer.program)
    program.analysis.training = TrainingRecord(trainer.epochs_begun())
    stats = schedule.statistics(program)
    stats["training"] = training
    if options.strict and not stats["target"]["met"]:
        raise PrunefxError(f"prune_while_training ended at {target.kind}={stats['target']['achieved']:.3f} of the "
                           f"dense model, more than {TARGET_TOLERANCE:.0%} from the target {target.fraction:g}")
    # training steps change the weights even where no event removed a channel
    return Result(program, modified=trainer.total_steps > 0 or bool(schedule.done), stats=stats)


def _target(options: PruneWhileTrainingConfig) -> Target:
    given = [kind for kind in _TARGETS if getattr(options, kind) is not None]
    if len(given) != 1 or options.channels is not None:
        named = [kind for kind in TARGET_KINDS if getattr(options, kind, None) is not None]
        raise PrunefxError(f"prune_while_training needs exactly one target among {', '.join(_TARGETS)} "
                           f"(got {', '.join(named) or 'none'})")
    fraction = checks.number("prune_while_training", given[0], getattr(options, given[0]), low=0.0, high=1.0,
                             low_open=True)
    return Target(given[0], fraction)


def _measure(program: Program, kind: str) -> float:
    """A Program's size in the target's unit."""
    cost = count(program)
    return float(cost.macs if kind == "macs" else cost.params)


class PruningSchedule:
    """The trainer hooks: Fisher accumulation after backward, a cut every `interval` steps.

    `due` and `cut` need no Trainer: prunefx/interop/recovery.py drives the same schedule from a user's own loop."""

    def __init__(self, program: Program, target: Target, options: PruneWhileTrainingConfig):
        self.target, self.options = target, options
        self.events, self.interval = int(options.prune_events), int(options.interval)
        if self.events < 1 or self.interval < 1:
            raise PrunefxError("prune_while_training: 'prune_events' and 'interval' must be positive")
        self.last_step = self.events * self.interval
        self.dense = _measure(program, target.kind)
        self.before = count(program)
        self.fisher = FisherAccumulator(program.module)
        self.min_widths = self._dense_floors(program)
        self.done: list[dict] = []

    def _dense_floors(self, program: Program) -> dict[str, int]:
        """`max_ratio` bounds what a group loses against its *dense* width: without these floors every
        cut could take max_ratio of what the previous cuts left, and a group would shrink to
        (1 - max_ratio)^events of its width (a 5x target left ResNet-20 with a few channels per layer)."""
        combing = find_channel_groups(program.module, keep=set(self.options.keep))
        floor = 1.0 - float(self.options.max_ratio)
        # a head grid's two factors slice the same tensor dims: each floor goes by its own name
        return {name: max(math.ceil(floor * group.size - 1e-9), 1)
                for group, names in zip(combing.groups, floor_names(program.module, combing)) for name in names}

    def accumulate(self, trainer: Trainer | None = None, *, loss_scale: float = 1.0) -> None:
        if len(self.done) < self.events:
            self.fisher.accumulate(loss_scale)

    def due(self, step: int) -> bool:
        """Whether an event comes after `step` optimizer steps."""
        return step % self.interval == 0 and len(self.done) < self.events

    def maybe_prune(self, trainer: Trainer, step: int) -> None:
        if not self.due(step):
            return
        program, optimizer = trainer.program, trainer.optimizer
        before = dict(program.module.named_parameters())
        # cut on a copy, taken on once whole: a cut that fails leaves the trained weights, not the copy's index probes
        pruned, kept = cut_tracking_indices(
            program, lambda cut: self.cut(cut, step, train_loss=trainer.last_losses.get("loss")))
        program.adopt(pruned)
        trainer.replace_program(program)  # new parameters: a new optimizer (and train mode restored)
        if self.options.optimizer_state == "carry":  # momentum goes on for the channels kept
            carry_state(optimizer, trainer.optimizer, before, dict(program.module.named_parameters()), kept)
        self.restart_scores(program.module)

    def cut(self, program: Program, step: int, *, train_loss: float | None = None) -> dict:
        """The next event, on `program` in place (left in eval mode): `program` is the one the scores were
        accumulated on or a copy of it (the scores are kept by parameter name). Returns the event's record."""
        kept_after = self.target.fraction ** ((len(self.done) + 1) / self.events)  # of the dense model
        program.eval()  # shapes are re-propagated during removal: batch norms must not update statistics
        result = run_inner(remove_channels, program, {
            self.target.kind: self._relative(program, kept_after), "importance": self._importance,
            "ranking": self.options.ranking, "round_to": self.options.round_to,
            "max_ratio": self.options.max_ratio, "min_widths": self.min_widths, "keep": self.options.keep,
            "strict": False})
        removed = result.facts_as(ChannelsRemoved)
        event = {"step": step, "kept_target": kept_after, "macs": removed.macs_after,
                 "params": removed.params_after, "channels_removed": removed.channels_removed,
                 "train_loss": train_loss}
        self.done.append(event)
        return event

    def checkpoint_state(self) -> dict:
        """What a training checkpoint keeps of the schedule (passes/training/resume.py): its settings, the cuts
        made and the scores accumulated since the last one."""
        return {"settings": self._settings(), "done": self.done, "fisher": self.fisher.state()}

    def resume_state(self, state: dict, trainer: Trainer) -> None:
        """Go on from a checkpoint's state, on the program the trainer resumed (the cuts already made on it);
        refused when the schedule's settings differ, as the trainer refuses other steps or another optimizer."""
        self.restore(state, trainer.program.module, where=f"the checkpoint in {trainer.config.checkpoint_dir}")

    def restore(self, state: dict, module, *, where: str, gradients_from=None) -> None:
        """Go on from `checkpoint_state`'s `state` on `module` (the graph with the cuts already made), the scores
        read from `gradients_from` as in `restart_scores`; refused when the settings differ from the saved ones."""
        for key, value in self._settings().items():
            if key in state["settings"] and state["settings"][key] != value:  # a setting it did not record: not held
                raise TrainingError(f"{where} was written with prune_while_training's {key}="
                                    f"{state['settings'].get(key)}, this run has {key}={value}; resume with the same "
                                    f"settings or start a new checkpoint")
        self.done = [dict(event) for event in state["done"]]
        self.restart_scores(module, gradients_from=gradients_from)
        self.fisher.load_state(state["fisher"])

    def _settings(self) -> dict:
        options = self.options
        return {"target": self.target.kind, "fraction": self.target.fraction, "prune_events": self.events,
                "interval": self.interval, "ranking": options.ranking, "round_to": int(options.round_to),
                "max_ratio": float(options.max_ratio), "keep": list(options.keep),
                "optimizer_state": options.optimizer_state}

    def restart_scores(self, module, *, gradients_from=None) -> None:
        """CPD resets the scores after every cut; `gradients_from` as in FisherAccumulator."""
        self.fisher = FisherAccumulator(module, gradients_from=gradients_from)

    def _importance(self, module, combing):
        return group_importance(combing, self.fisher.per_class(combing), "fisher")

    def _relative(self, program: Program, kept_after: float) -> float:
        """Fractions given to remove_channels are of the model as it is now, the schedule's of the dense one."""
        return min(1.0, kept_after * self.dense / _measure(program, self.target.kind))

    def statistics(self, program: Program) -> dict:
        after = count(program)
        achieved = _measure(program, self.target.kind) / self.dense
        met = abs(achieved - self.target.fraction) <= TARGET_TOLERANCE * self.target.fraction
        return {"target": {"kind": self.target.kind, "fraction": self.target.fraction, "achieved": achieved,
                           "met": met},
                "macs_before": self.before.macs, "macs_after": after.macs, "params_before": self.before.params,
                "params_after": after.params, "events": self.done, "importance": "fisher (task + KD loss)"}
