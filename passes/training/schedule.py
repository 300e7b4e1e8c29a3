"""The trainer's optimizer and learning-rate schedule (see passes/training/engine.py).

Learning rate: linear warm-up for `warmup_steps` steps (`lr * (s + 1) / (warmup_steps + 1)` at step s), then
a half cosine from `lr` at step `warmup_steps` down to 0 at step `total_steps`.
Weight decay applies to the kernels and matrices that convolutions and matrix products read, not to biases,
norm scales, nor to the tokens, position embeddings and bias tables a vision transformer adds, concatenates or
indexes, whatever their number of dims (as timm leaves them undecayed).
"""

from __future__ import annotations

import math

import torch

from prunefx.graph.int8.quantization import FAKE_QUANT_OPS
from prunefx.graph.operators import CONVOLUTIONS, LINEARS, MATRIX_PRODUCTS, TRANSPOSED_CONVOLUTIONS
from prunefx.passes.training.config import TrainConfig, TrainingError

aten = torch.ops.aten
# What reads a kernel or a matrix, and what may stand between the parameter and that reader.
_KERNEL_READERS = CONVOLUTIONS | TRANSPOSED_CONVOLUTIONS | MATRIX_PRODUCTS | LINEARS | {aten.einsum.default}
_PASSED_THROUGH = {aten.t.default, aten.transpose.int, aten.permute.default, aten.view.default, aten.reshape.default,
                   aten.expand.default, aten.unsqueeze.default, aten.contiguous.default, aten.clone.default,
                   aten._to_copy.default, aten.to.dtype, *FAKE_QUANT_OPS}

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


def make_optimizer(module: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    params = [p for _, p in module.named_parameters() if p.requires_grad]
    if not params:  # else the first backward fails with "element 0 of tensors does not require grad"
        raise TrainingError("no parameter of the model requires grad, so training cannot change it (a "
                            "checkpoint saved frozen, e.g. an EMA copy?): call requires_grad_(True) on the "
                            "module before capturing it")
    decayed = _kernels(module)
    groups = [{"params": [p for p in params if id(p) in decayed], "weight_decay": config.weight_decay},
              {"params": [p for p in params if id(p) not in decayed], "weight_decay": 0.0}]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum)
    return torch.optim.AdamW(groups, lr=config.lr, betas=(config.momentum, 0.999))


def _kernels(module: torch.nn.Module) -> set[int]:
    """ids of the parameters a convolution or matrix product reads, directly or through a transpose, a view or a
    fake quantizer; for a module without a graph, those of two or more dims."""
    if not isinstance(module, torch.fx.GraphModule):
        return {id(p) for p in module.parameters() if p.dim() >= 2}
    parameters = dict(module.named_parameters())
    return {id(parameters[node.target]) for node in module.graph.find_nodes(op="get_attr")
            if node.target in parameters and parameters[node.target].dim() >= 2 and _read_as_kernel(node)}


def _read_as_kernel(node: torch.fx.Node) -> bool:
    for user in node.users:
        if user.target in _KERNEL_READERS or (user.target in _PASSED_THROUGH and _read_as_kernel(user)):
            return True
    return False
