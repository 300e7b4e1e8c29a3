"""Full float32 for convolutions and matrix products inside a block, and the process's settings as found after it.

cuDNN's default TF32 moves a convolution's output by about 1e-3 of its magnitude (oneDNN's bf16 more): enough for
calibration to choose other channels, and for an exact rewrite to read as inexact. The device prunefx's work runs
on (prunefx/device.py) and the Pipeline's exactness check (passes/core/pipeline.py) compute inside this. Training
steps need no such exactness, and compute with the settings the process had (`float32_as_found`): on a GPU,
cuDNN's TF32 by default, as a PyTorch training loop runs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def full_float32() -> Iterator[None]:
    """TF32 (and oneDNN's bf16) off for convolutions and matrix products inside the block: cuDNN's default TF32
    moves the calibration activations by about 1e-3 from the CPU's, enough to choose other channels. Torch keeps
    these settings twice (the legacy precision and flags, and since 2.9 `fp32_precision` strings) and its reads
    raise when the two disagree: inside, both say full float32; after, each is put back as the process left it."""
    saved = _precision_state()
    _FOUND.append(saved)
    torch.set_float32_matmul_precision("highest")
    torch.backends.cudnn.allow_tf32 = False
    for key, _ in _precision_keys():  # a global fp32_precision would otherwise override the flags
        if key != ("cuda", "all"):
            _set_string(key, "ieee")
    try:
        yield
    finally:
        _FOUND.pop()
        _put_back(saved)


# the settings each full_float32 block now open found, outermost first
_FOUND: list[tuple[str | None, bool | None, dict[tuple[str, str], str]]] = []


@contextlib.contextmanager
def float32_as_found() -> Iterator[None]:
    """Inside full_float32 blocks, the settings the outermost one found (the process's own) for the work of this
    block, and full float32 again after it: for training steps, which need no exactness and on a GPU would give
    up the TF32 a PyTorch training loop runs with. Outside any block it changes nothing."""
    if not _FOUND:
        yield
        return
    inside = _precision_state()
    _put_back(_FOUND[0])
    try:
        yield
    finally:
        _put_back(inside)


def _put_back(state: tuple[str | None, bool | None, dict[tuple[str, str], str]]) -> None:
    matmul, cudnn, strings = state
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
