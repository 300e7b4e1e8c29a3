"""The precision a training step computes in: `fp32`, or `bf16` (bfloat16 autocast).

Under `bf16` the student's and the teacher's forward passes and the losses run under torch.autocast with
bfloat16: matrix products and convolutions take bfloat16 inputs (on a GPU since Ampere, the tensor cores'
rate), while the weights, their gradients and the optimizer's state stay float32 (autocast casts copies),
so no loss scaling is needed: bfloat16 has float32's range. The losses read float32 (losses.in_float32).

A captured graph asserts the dtype it was traced with wherever the model casts (`x.float()` becomes
`aten._assert_tensor_metadata(x, dtype=float32)` before the cast); under autocast that input is bfloat16 and
the assertion would stop the first step. The modules a trainer calls are its own copies of the graphs
(losses.tap_outputs), so those copies drop the dtype from their assertions and keep the rest (sizes,
devices); the Program given, its evaluation and its export keep every assertion.
"""

from __future__ import annotations

import contextlib

import torch

from prunefx.passes.training.config import PRECISIONS, TrainingError

FP32, BF16 = PRECISIONS

_ASSERT_METADATA = torch.ops.aten._assert_tensor_metadata.default
_DTYPE_AT = 3  # its positional arguments: a, size, stride, dtype


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The context a training step's forward passes and losses run in."""
    if precision == FP32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def check_supported(precision: str, device: torch.device) -> None:
    """Refuse bf16 on a GPU without bfloat16 arithmetic (before Ampere: V100, T4, Jetson Xavier), where torch
    would emulate it far slower than float32. On a CPU it runs everywhere (oneDNN emulates it where the
    processor lacks AVX-512 BF16 or AMX: correct, not faster)."""
    if precision != BF16 or device.type != "cuda":
        return
    with torch.cuda.device(device):  # torch asks the current GPU: the one trained on, on a machine of mixed GPUs
        supported = torch.cuda.is_bf16_supported(including_emulation=False)
    if not supported:
        name = torch.cuda.get_device_name(device)
        raise TrainingError(f"precision 'bf16' needs a GPU with bfloat16 arithmetic (Ampere or newer); {name} has "
                            "none: train in 'fp32'")


def without_dtype_assertions(module: torch.fx.GraphModule) -> int:
    """Drop the dtype from every `_assert_tensor_metadata` of `module`'s graph (a trainer's own copy: see the
    module docstring), in place; the number changed."""
    changed = 0
    for node in module.graph.nodes:
        if node.op != "call_function" or node.target is not _ASSERT_METADATA:
            continue
        if len(node.args) > _DTYPE_AT and node.args[_DTYPE_AT] is not None:
            node.args = (*node.args[:_DTYPE_AT], None, *node.args[_DTYPE_AT + 1:])
        elif node.kwargs.get("dtype") is not None:
            node.kwargs = {**node.kwargs, "dtype": None}
        else:
            continue
        changed += 1
    if changed:
        module.recompile()
    return changed
