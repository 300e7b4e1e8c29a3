"""A small wrapper around an ONNX Runtime CPU InferenceSession with pinned, stated threads.

ONNX Runtime is prunefx's embedded default backend: it runs everywhere, CI included. Latency numbers
are only comparable when the thread count is fixed, so it is always explicit here (one intra-op
thread by default), with one inter-op thread, sequential execution and all graph optimisations.
Worker threads spin between operators, ONNX Runtime's default and what a deployed session runs with:
turned off, every parallel operator waits for its threads to wake up, a fixed cost per operator that
slows small many-operator models most and hides part of what pruning saves (benchmarks/prune_latency.py
times both settings). `spinning=False` is there for hosts that share their cores with other work.
Loading and input errors become OnnxSessionError with a one-line message instead of a protobuf or
pybind traceback.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from prunefx.graph.errors import PrunefxError
from prunefx.graph.safety.regular_files import require_regular_file
from prunefx.runtime.errors import OnnxSessionError, first_line
from prunefx.runtime.onnx.bounds import check_value_sizes
from prunefx.runtime.ort.denormals import subnormal_mode
from prunefx.runtime.ort.interrupts import interruptible_run
from prunefx.runtime.ort.options import cpu_session
from prunefx.runtime.ort.refusals import is_unreadable_protobuf, refusal_reason
from prunefx.runtime.ort.threads import DEFAULT_THREADS, threads_problem


class OnnxRuntimeSession:
    """Run an .onnx file on the CPU: `OnnxRuntimeSession(path, threads=2).run(x)` -> list of arrays."""

    def __init__(self, path: str | os.PathLike, *, threads: int = DEFAULT_THREADS, spinning: bool = True,
                 flush_denormals: bool = False, profile_prefix: str | None = None, checked: bool = False):
        # checked: check_session_file passed on this file just before (an OnnxRunnerMaker's, made once per file): a
        # ViT-L's value sizes take a second or two to infer
        _check_threads(threads)
        self.path = Path(path)
        self.threads = threads
        self.spinning = spinning
        self.flush_denormals = flush_denormals
        # profile_prefix: ONNX Runtime's profiler on, its file from session.end_profiling() (runtime/ort/profile_nodes.py)
        self.session = _load(self.path, threads, spinning, flush_denormals, profile_prefix, checked=checked)
        self.input_names = [arg.name for arg in self.session.get_inputs()]
        self.output_names = [arg.name for arg in self.session.get_outputs()]

    def run(self, *inputs: np.ndarray | torch.Tensor) -> list[np.ndarray]:
        """Run the model on positional inputs (numpy arrays or torch tensors), in graph input order."""
        return self.run_feed(self.feed(*inputs))

    def feed(self, *inputs: np.ndarray | torch.Tensor) -> dict[str, np.ndarray]:
        """Check the inputs against the graph and convert them to the feed ONNX Runtime expects."""
        if len(inputs) != len(self.input_names):
            raise OnnxSessionError(f"{self.path.name} takes {len(self.input_names)} input(s), "
                                   f"got {len(inputs)}")
        arrays = [as_array(value) for value in inputs]
        for arg, array in zip(self.session.get_inputs(), arrays):
            _check_shape(self.path.name, arg, array.shape)
        return dict(zip(self.input_names, arrays))

    def runner(self, *inputs: np.ndarray | torch.Tensor) -> Callable[[], list[np.ndarray]]:
        """A zero-argument callable running on fixed inputs: conversion happens once, not per call."""
        feed = self.feed(*inputs)
        return lambda: self.run_feed(feed)

    @contextlib.contextmanager
    def timed_calls(self, feed: dict[str, np.ndarray]) -> Iterator[Callable[[], list[np.ndarray]]]:
        """For a timing loop: a call that runs `feed` under RunOptions made interruptible once around the loop,
        where each `run` sets them up (about 5 us a call, which a fresh process's bare call does not spend)."""
        with interruptible_run() as options:
            yield lambda: self._run_with(options, feed)

    def run_feed(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Run a feed made by `feed` (checked and converted once: a timing loop runs the same feed many times)."""
        with interruptible_run() as options:  # ends on SIGINT/SIGTERM (runtime/ort/interrupts.py)
            return self._run_with(options, feed)

    def _run_with(self, options: ort.RunOptions, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        try:
            # the calling thread computes in the session's subnormal mode, which ONNX Runtime sets there only for
            # a process's first session (ort/denormals.py)
            with subnormal_mode(self.flush_denormals):
                return self.session.run(self.output_names, feed, options)
        except Exception as error:  # pybind errors (wrong dtype, kernel failures) have no common base
            raise OnnxSessionError(f"ONNX Runtime failed to run {self.path.name}: "
                                   f"{refusal_reason(error)}") from error


def check_session_file(path: Path, threads: int) -> None:
    """What a session checks before ONNX Runtime reads the file: the thread count, a regular file (not a
    device or a pipe), and value sizes within the bounds a hostile file could exceed (runtime/onnx/bounds.py)."""
    _check_threads(threads)
    if not path.exists():
        raise OnnxSessionError(f"no such ONNX file: {path}")
    try:
        require_regular_file(path, "ONNX file")
    except PrunefxError as error:
        raise OnnxSessionError(str(error)) from None
    check_value_sizes(path)


def _check_threads(threads: int) -> None:
    problem = threads_problem(threads)
    if problem is not None:
        raise OnnxSessionError(problem)


def _load(path: Path, threads: int, spinning: bool, flush_denormals: bool = False,
          profile_prefix: str | None = None, *, checked: bool = False) -> ort.InferenceSession:
    if not checked:
        check_session_file(path, threads)
    try:
        with subnormal_mode(None):  # a process's first session sets its creator's mode: put it back
            return cpu_session(str(path), threads, spinning, flush_denormals, profile_prefix)
    except Exception as error:  # InvalidProtobuf, Fail, InvalidGraph...: all mean "unusable file"
        if _out_of_memory(error):  # a memory limit, not a corrupt file: the CLI names it as such
            raise MemoryError(f"loading {path} into ONNX Runtime: {first_line(error)}") from error
        if is_unreadable_protobuf(error):
            raise OnnxSessionError(f"cannot load ONNX model {path} (corrupt or not an ONNX file): "
                                   f"{refusal_reason(error)}") from error
        raise OnnxSessionError(f"ONNX Runtime {ort.__version__} cannot load {path}: {refusal_reason(error)}") from error


def _out_of_memory(error: Exception) -> bool:
    text = str(error).lower()
    return isinstance(error, MemoryError) or any(words in text for words in ("bad_alloc", "bad allocation",
                                                                             "failed to allocate"))


def as_array(value: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    # ONNX Runtime reads the buffer directly; a strided view (a transposed tensor) must be copied (asarray: a scalar
    # stays one, where ascontiguousarray would give it a dimension)
    return np.asarray(value, order="C")


def shape_fits(expected, shape: tuple[int, ...]) -> bool:
    """Whether `shape` fits an input's declared dims: symbolic ones (strings or None) fit any size. No dims at all is
    a scalar or an input whose shape the file leaves out, which ONNX Runtime reports alike: any shape fits here
    (bench, which reads the file's declarations, refuses a shape given for a scalar: prunefx/bench_models.py)."""
    return not expected or len(expected) == len(shape) and all(not isinstance(want, int) or want == got
                                                               for want, got in zip(expected, shape))


def _check_shape(file_name: str, arg: ort.NodeArg, shape: tuple[int, ...]) -> None:
    expected = arg.shape
    if not shape_fits(expected, shape):
        shown = tuple(d if isinstance(d, int) else "?" for d in expected)
        raise OnnxSessionError(f"{file_name}: input '{arg.name}' expects shape {shown}, got {tuple(shape)}")
