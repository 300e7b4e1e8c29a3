"""The device prunefx's calibrated work runs on: channel importance, the second-order (OBS) math and
compensation, calibration passes (batch-norm statistics, Hessians) and recovery training.

    device = resolve_device("auto")          # cuda when torch sees a GPU, else cpu; "cuda" without one: refused
    with on_device(program, device) as placed:
        result = Pipeline(steps).run(program)   # every pass sees the module on `device`
        pruned = placed.home(result.program)    # brought back before anything is written

`on_device` moves the Program (its tensors, the devices its graph names, its example inputs:
graph/placement.py) to the device, and back to where it was when the block ends, also when a pass raised; a
cuda:N is torch's current device inside, so that what measures there times the same GPU.
Programs made inside the block (a Pipeline works on a copy) are brought back with `placed.home`. Calibration batches
go along with `batches_on`: some readers run the module on the batches as they are given.
Files are always written from the CPU: a model.pt2 or ONNX file must not depend on the GPU that made it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
import torch.utils._pytree as pytree

from prunefx.graph import Program
from prunefx.graph.model_state import random_state_kept
from prunefx.graph.placement import DEVICE_CHOICES, device_named, module_device, move_program

__all__ = ["DEVICE_CHOICES", "Placement", "batches_on", "on_device", "resolve_device"]


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """"auto" (or None): cuda when available, else cpu; "cpu"; "cuda" or "cuda:N" (a PrunefxError, one line,
    when torch sees no such GPU). The training engine resolves its `device` option with the same function."""
    return device_named(name)


@dataclass(frozen=True)
class Placement:
    """Where `on_device` put a Program (`device`) and where it came from (`origin`)."""

    device: torch.device
    origin: torch.device

    def home(self, program: Program) -> Program:
        """`program` (made inside the block, e.g. by a Pipeline) moved to the origin, and returned."""
        return move_program(program, self.origin)


@contextlib.contextmanager
def on_device(program: Program, device: str | torch.device | None) -> Iterator[Placement]:
    """`program` on `device` inside the block (None: where it is), back where it was after it, also when the
    block raised (see the module docstring)."""
    origin = module_device(program.module)
    placement = Placement(origin if device is None else resolve_device(device), origin)
    try:  # a move cut short (out of GPU memory, Ctrl-C) leaves some tensors moved: they go back too
        move_program(program, placement.device)
        with _full_float32(), current_gpu(placement.device):
            yield placement
    finally:
        move_program(program, origin)


def current_gpu(device: torch.device | None) -> contextlib.AbstractContextManager:
    """cuda:N as torch's current device inside the block: what measures there (the cuda backend, TensorRT, a
    latency table) works on "cuda", the current device, and would time another GPU than the passes run on."""
    if device is not None and device.type == "cuda" and device.index is not None and torch.cuda.is_available():
        return torch.cuda.device(device.index)
    return contextlib.nullcontext()


@contextlib.contextmanager
def _full_float32() -> Iterator[None]:
    """TF32 (and oneDNN's bf16) off for convolutions and matrix products inside the block: cuDNN's default TF32
    moves the calibration activations by about 1e-3 from the CPU's, enough to choose other channels. Torch keeps
    these settings twice (the legacy precision and flags, and since 2.9 `fp32_precision` strings) and its reads
    raise when the two disagree: inside, both say full float32; after, each is put back as the process left it."""
    saved = _precision_state()
    torch.set_float32_matmul_precision("highest")
    torch.backends.cudnn.allow_tf32 = False
    for key, _ in _precision_keys():  # a global fp32_precision would otherwise override the flags
        if key != ("cuda", "all"):
            _set_string(key, "ieee")
    try:
        yield
    finally:
        matmul, cudnn, strings = saved
        if matmul is not None:
            torch.set_float32_matmul_precision(matmul)
        if cudnn is not None:
            torch.backends.cudnn.allow_tf32 = cudnn
        _put_back_strings(strings)  # last: the legacy setters above rewrite them


def _precision_state() -> tuple[str | None, bool | None, dict[tuple[str, str], str]]:
    """The legacy matmul precision and cuDNN flag (None where reading raises: the process set the two APIs apart)
    and every `fp32_precision` string as torch keeps it."""
    return (_readable(torch.get_float32_matmul_precision), _readable(lambda: torch.backends.cudnn.allow_tf32),
            {key: torch._C._get_fp32_precision_getter(*key) for key, _ in _precision_keys()})


def _put_back_strings(saved: dict[tuple[str, str], str]) -> None:
    """Each string as `saved` again, parents first (setting a parent sets its children). A string equal to its
    parent's is set to "none", which follows the parent, as a string the parent's setting wrote did before."""
    for key, parent in _precision_keys():
        inherited = parent in saved and saved[key] == saved[parent]
        _set_string(key, "none" if inherited else saved[key])
        if torch._C._get_fp32_precision_getter(*key) != saved[key]:  # torch's own default that is not "none"
            _set_string(key, saved[key])


def _set_string(key: tuple[str, str], value: str) -> None:
    torch._C._set_fp32_precision_setter(*key, value)


# (backend, operation) of each fp32_precision string, parents first, with the one it inherits from: the process as
# a whole, oneDNN (the CPU) and its matrix products, convolutions and RNNs, CUDA, cuBLAS's matrix products and
# cuDNN's convolutions and RNNs. Read and written through torch's own keys: the module attributes do not always
# name the string they set (torch.backends.mkldnn.fp32_precision reads oneDNN's and sets the process's).
_PRECISION_TREE = ((("generic", "all"), None), (("mkldnn", "all"), ("generic", "all")),
                   (("mkldnn", "matmul"), ("mkldnn", "all")), (("mkldnn", "conv"), ("mkldnn", "all")),
                   (("mkldnn", "rnn"), ("mkldnn", "all")), (("cuda", "all"), ("generic", "all")),
                   (("cuda", "matmul"), ("cuda", "all")), (("cuda", "conv"), ("cuda", "all")),
                   (("cuda", "rnn"), ("cuda", "all")))


def _precision_keys() -> tuple[tuple[tuple[str, str], tuple[str, str] | None], ...]:
    """The strings this torch keeps (none before 2.9)."""
    return _PRECISION_TREE if hasattr(torch._C, "_get_fp32_precision_getter") else ()


def _readable(read):
    try:
        return read()
    except RuntimeError:
        return None


def batches_on(batches: Iterable | None, device: str | torch.device) -> list | None:
    """Calibration batches (tensors, tuples of tensors, or (inputs, labels) pairs) with every tensor on
    `device`; None stays None. torch's generator as found afterwards: a DataLoader draws its workers' base seed
    from it on every iter()."""
    if batches is None:
        return None
    target = torch.device(device)
    with random_state_kept(()):
        return [pytree.tree_map_only(torch.Tensor, lambda tensor: tensor.to(target), batch) for batch in batches]
