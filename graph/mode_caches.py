"""Caches a module fills in eval mode, dropped before a capture.

Some modules store what an eval-mode call computes from their weights and read the store on later calls (timm's
LeViT, EfficientFormer, EfficientViT and TinyViT gather their attention biases once per device). Captured after such
a call, the graph would read a frozen copy of the weights as a constant: pruning and training would not reach it,
and the written-back model would read its tensors where the Program reads the copy. These modules drop the cache in
their own `train(True)`, as nn.Module's contract for mode-dependent state has it. It is called here only on a module
that both overrides `train` and holds a container of tensors (a cache, filled): other overrides (Hugging Face's
swaps kernels) are not run for nothing. Every module's mode, and every parameter's requires_grad (an override may
freeze stages), is then set back without calling `train` again.
Run it inside `left_as_found` (graph/model_state.py): the user's model gets its cache back afterwards.
"""

from __future__ import annotations

import torch


def drop_mode_caches(model: torch.nn.Module) -> None:
    caching = [module for module in model.modules()
               if type(module).train is not torch.nn.Module.train and _holds_tensors(module)]
    if not caching:
        return
    modes = [(module, module.training) for module in model.modules()]
    trainable = [(parameter, parameter.requires_grad) for parameter in model.parameters()]
    for module in caching:
        module.train(True)
    for module, mode in modes:
        module.training = mode
    for parameter, flag in trainable:
        parameter.requires_grad_(flag)


_MODULE_TABLES = {"_parameters", "_buffers", "_modules"}  # nn.Module's own: its state, not a cache


def _holds_tensors(module: torch.nn.Module) -> bool:
    """Whether one of the module's own dicts, lists or tuples holds a tensor (timm's `attention_bias_cache`)."""
    for key, value in vars(module).items():
        if key in _MODULE_TABLES:
            continue
        items = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else ()
        if any(isinstance(item, torch.Tensor) for item in items):
            return True
    return False
