"""distill: recovery training of a Program with knowledge distillation from a frozen teacher (CPD's "distill").

Trains the Program's weights (its graph is left as it is, unless a hook replaces it) with

    loss = (1 - kd_weight) * cross_entropy(student, labels)
           + kd_weight * T^2 * KL(softmax(teacher / T) || softmax(student / T))
           + sum of weight * MSE(student node, teacher node) over `feature_losses`

The KD term pulls the student's softened class distribution towards the teacher's (the "dark knowledge"
of the dense model, which is what recovers accuracy after pruning); the cross-entropy keeps it on the
labels; feature terms match intermediate tensors, useful for segmentation decoders. Blends left by
linearize_blocks are raised from 0 to 1 over the first `ramp` fraction of the steps (progressive depth
pruning). Hooks that read
gradients (e.g. Fisher channel importance while pruning) see the gradients of the whole loss.
The engine, its schedule (linear warm-up, cosine to 0), checkpoints and distributed mode are described
in passes/training/engine.py.

Config:
- `data` (required): training batches, `(inputs, labels)` tuples; a list or a loader (its
  `set_epoch(epoch)` and `shard(rank, world_size)` are used when present);
- `teacher`: a Program or torch.nn.Module (default: a frozen copy of the program as given). Run right
  after pruning, that default is the *pruned* model, which teaches nothing new: for recovery after
  pruning pass the dense model. `eval_data`: evaluation batches (label -1 is padding, ignored);
- `after_backward`, `after_step`: hook lists (see passes/training.Trainer);
- the TrainConfig fields: `steps` or `epochs` (one is required), `optimizer` (sgd | adamw, default sgd),
  `lr` (0.01), `momentum` (0.9; AdamW's beta1), `weight_decay` (1e-4, matrices and kernels only),
  `warmup_steps` (0), `temperature` (4), `kd_weight` (0.9), `feature_losses` ({student node: teacher
  node | (teacher node, weight)}), `max_grad_norm` (None), `eval_every` (0: at the end),
  `checkpoint_dir` (None), `checkpoint_every` (0: at the end), `resume` (False), `progress`
  (None: a bar on a terminal), `seed` (0), `device` (None: where the program's parameters are),
  `task` (classification | segmentation | detection; `prunefx compress` gives the data set's: a
  detector, a YOLO export output, distils boxes and class scores with no loss on its labels).

Sparse weights: when `program.analysis` records weights made sparse by sparsify_nm, their zeros are
written back after every optimizer step (passes/rewrites/sparse_masks.py), so they stay exactly zero.
Quantization-aware training: a Program holding INT8 fake quantizers (passes/quantize_int8.py) trains through
them: torch's fake-quantize operators pass the gradient straight through inside their range and zero it
where they clip (the straight-through estimator), so the weights learn to live on their INT8 grid and the
layers after to absorb the activations' rounding. The scales stay fixed at their calibrated values (buffers
and graph constants, not parameters): learnable scales (LSQ) would need other operators than the two the ONNX
exporter turns into the Q/DQ pairs TensorRT and ONNX Runtime read, and one epoch of recovery is too short to
move them usefully. Zeros of 2:4 masks stay zero (fq(0) = 0); pruned widths are untouched (the graph is).
For QAT pass the float model as `teacher`. `stats["quantization_aware"]` says whether the Program held
fake quantizers.
Preconditions: the Program has a static batch size, that of its example inputs, and every batch
(per process, when launched by torchrun) has exactly that many items.
Statistics: steps, final train/task/KD/feature losses (means over the last 20 steps), the evaluation
history, seconds and images per second (the Result's stats: the report, nothing a later pass reads).
Non-goals: mixed precision, gradient accumulation, feature matching between tensors of different
shapes (no learned adapters), choosing which channels to prune (other passes do that, through hooks).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch

from prunefx.graph import Program
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
@graph_pass(config=DistillConfig, in_place=True, reads=("sparsity", "linearize"))
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
                      after_step=options.after_step or ())
    schedule = blend_schedule(program, trainer.total_steps)
    if schedule is not None:  # linearize_blocks left blends: fade their activations out while training
        trainer.after_step.insert(0, schedule)
    if recorded_weights(program):  # sparsify_nm recorded sparse weights: their zeros stay zero (sparse_masks.py)
        masks = SparseMasks(program)
        trainer.after_backward.insert(0, masks.after_backward)
        trainer.after_step.insert(0, masks.after_step)
    stats = {**trainer.fit(), "quantization_aware": has_fake_quant(program.graph)}
    trained = trainer.program
    return Result(trained, modified=_changed(before, trained), stats=stats)


def _snapshot(program: Program) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in program.state_dict().items()}


def _changed(before: dict[str, torch.Tensor], program: Program) -> bool:
    """Whether any parameter or buffer differs (names, shapes or values) from the snapshot."""
    after = program.state_dict()
    if before.keys() != after.keys():
        return True
    return any(b.shape != a.shape or not torch.equal(b, a.detach().to(b.device)) for b, a in
               ((before[name], after[name]) for name in before))
