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
    held, found = floating_dtypes(program), dtype_names([*module.parameters(), *module.buffers()])
    if not held or not found or held == found:
        return module
    if len(held) == 1 and len(found) == 1:
        return module.to(getattr(torch, held[0]))
    raise WriteBackError(f"cannot write {name} back: the pruned program holds {' and '.join(held)} tensors and the "
                         f"model {' and '.join(found)}: pass the model in the program's precision")
