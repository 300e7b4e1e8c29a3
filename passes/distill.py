"""distill: recovery training of a Program with knowledge distillation from a frozen teacher (CPD's "distill").

Trains the Program's weights on cross-entropy, a softened KL towards the teacher and optional feature terms;
quantization-aware when the Program holds INT8 fake quantizers, and 2:4 zeros stay zero. For recovery after
pruning (or INT8) pass the dense (or float) model as `teacher`: the default, a copy of the input, teaches
nothing new. The loss, the config, QAT and the preconditions: see docs/algorithms.md, 'distill'.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch

from prunefx.graph import Program
from prunefx.graph.analysis_record import TrainingRecord
from prunefx.graph.int8.quantization import has_fake_quant
from prunefx.passes.core.contract import graph_pass
from prunefx.passes.core.pass_config import given, option
from prunefx.passes.core.registry import shipped_pass
from prunefx.passes.core.result import Result
from prunefx.passes.linearize_blocks import blend_schedule
from prunefx.passes.rewrites.sparse_masks import SparseMasks, recorded_weights
from prunefx.passes.training.config import TrainingPassConfig
from prunefx.passes.training.engine import TrainConfig, Trainer, TrainingError


@dataclass
class DistillConfig(TrainingPassConfig):
    owner: ClassVar[str] = "distill"

    after_backward: list[Callable] | None = option(help="hooks called after every backward pass", cli=False)
    after_step: list[Callable] | None = option(help="hooks called after every optimizer step", cli=False)


# trains the Program it is given
@shipped_pass
@graph_pass(config=DistillConfig, in_place=True, reads=("sparsity", "linearize", "training"), writes=("training",))
def distill(program: Program, /, *, config: dict | None = None) -> Result:
    if given(config, "data") is None:  # before the other checks: without data nothing else matters
        raise TrainingError("distill needs 'data': the training batches, (inputs, labels) tuples")
    options = DistillConfig.parse(config)
    train_config = TrainConfig.from_dict(TrainConfig.fields_of(options), owner="distill")
    teacher = options.teacher
    if teacher is None and (train_config.kd_weight > 0 or train_config.feature_pairs):
        teacher = program.clone().eval()
    before = _snapshot(program)
    trainer = Trainer(program, teacher=teacher, data=options.data, config=train_config,
                      eval_data=options.eval_data, after_backward=options.after_backward or (),
                      after_step=options.after_step or (), first_epoch=epochs_trained(program))
    keep_what_records_ask(trainer, program)
    stats = {**trainer.fit(), "quantization_aware": has_fake_quant(program.graph)}
    if trainer.program is not program:  # resumed: the Trainer trained the checkpoint's program, ours takes it on
        program.adopt(trainer.program)
    program.analysis.training = TrainingRecord(trainer.epochs_begun())
    return Result(program, modified=_changed(before, program), stats=stats)


def epochs_trained(program: Program) -> int:
    """The epoch a training pass's data starts at: after those the Program's earlier training passes began."""
    return program.analysis.training.epochs if program.analysis.training is not None else 0


def keep_what_records_ask(trainer: Trainer, program: Program) -> None:
    """The hooks every training pass adds, ahead of its own, for what earlier passes recorded: linearize_blocks'
    blends raised to 1 (their activations faded out) and sparsify_nm's zeros kept at zero (sparse_masks.py)."""
    schedule = blend_schedule(program, trainer.total_steps)
    if schedule is not None:
        trainer.after_step.insert(0, schedule)
    if recorded_weights(program):
        masks = SparseMasks(program)
        trainer.after_backward.insert(0, masks.after_backward)
        trainer.after_step.insert(0, masks.after_step)


def _snapshot(program: Program) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in program.state_dict().items()}


def _changed(before: dict[str, torch.Tensor], program: Program) -> bool:
    """Whether any parameter or buffer differs (names, shapes or values) from the snapshot."""
    after = program.state_dict()
    if before.keys() != after.keys():
        return True
    return any(b.shape != a.shape or not torch.equal(b, a.detach().to(b.device)) for b, a in
               ((before[name], after[name]) for name in before))
