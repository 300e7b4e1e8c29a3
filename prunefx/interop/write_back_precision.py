"""The write-back's copy of the user's model in the pruned Program's floating dtype: a Program captured from a
bfloat16 copy of a float32 model writes back as a bfloat16 module, its tensors and its proof in that precision (the
float32 module could not match a bfloat16 Program within the proof's tolerance)."""

from __future__ import annotations

import torch
from torch import nn

from prunefx.graph import Program
from prunefx.interop.write_back_proof import WriteBackError
from prunefx.runtime.model_precision import dtype_names, floating_dtypes


def in_program_precision(module: nn.Module, program: Program, name: str) -> nn.Module:
    """The copy in the Program's floating dtype where each holds one and they differ (a bfloat16 Program of a
    float32 model: the module holds the Program's tensors, and proves itself, in bfloat16); differing mixes of
    dtypes cannot be matched: refused."""
    plain = _plain_tensors(module)  # `self.shift = torch.zeros(...)`: cut as a buffer, and cast as one
    held, found = floating_dtypes(program), dtype_names([*module.parameters(), *module.buffers(), *plain.values()])
    if not held or not found or held == found:
        return module
    if len(held) == 1 and len(found) == 1:
        dtype = getattr(torch, held[0])
        for (owner, attribute), tensor in plain.items():
            if tensor.is_floating_point():
                setattr(owner, attribute, tensor.to(dtype))
        return module.to(dtype)
    raise WriteBackError(f"cannot write {name} back: the pruned program holds {' and '.join(held)} tensors and the "
                         f"model {' and '.join(found)}: pass the model in the program's precision")


def plain_tensor_attributes(model: nn.Module) -> list[tuple[str, nn.Module, str, torch.Tensor]]:
    """(module path, module, attribute, tensor) of every plain tensor attribute (`self.shift = torch.zeros(...)`):
    neither a parameter nor a buffer, which the capture reads as a constant and pruning cuts like a buffer, and
    `module.to` leaves as it is. Shared modules once per path."""
    return [(path, owner, attribute, value) for path, owner in model.named_modules(remove_duplicate=False)
            for attribute, value in vars(owner).items()
            if isinstance(value, torch.Tensor) and not isinstance(value, nn.Parameter)]


def _plain_tensors(module: nn.Module) -> dict[tuple[nn.Module, str], torch.Tensor]:
    """The plain tensor attributes of `module`, by owner and name (each once)."""
    return {(owner, attribute): value for _, owner, attribute, value in plain_tensor_attributes(module)}
