"""Caches a module fills in eval mode, dropped before a capture.

Some modules store what an eval-mode call computes from their weights and read the store on later calls (timm's
LeViT, EfficientFormer and EfficientViT gather their attention biases once per device). Captured after such a call,
the graph would read a frozen copy of the weights as a constant: pruning and training would not reach it, and the
written-back model would read its tensors where the Program reads the copy. These modules drop the cache in their
own `train(True)`, as nn.Module's contract for mode-dependent state has it; it is called here for each module
whose class overrides `train`, and every module's mode, and every parameter's requires_grad (an override may freeze
stages), is then set back without calling `train` again.
Run it inside `left_as_found` (graph/model_state.py): the user's model gets its cache back afterwards.
"""

from __future__ import annotations

import torch


def drop_mode_caches(model: torch.nn.Module) -> None:
    modes = [(module, module.training) for module in model.modules()]
    trainable = [(parameter, parameter.requires_grad) for parameter in model.parameters()]
    for module, _ in modes:
        if type(module).train is not torch.nn.Module.train:
            module.train(True)
    for module, mode in modes:
        module.training = mode
    for parameter, flag in trainable:
        parameter.requires_grad_(flag)
