"""Zero-argument callables that run a model once, for the latency functions.

`torch_runner` runs a Program under `torch.inference_mode` with torch's intra-op thread count pinned
for the call and restored after it, so two runners with different thread counts can be measured
alternately. The pin is skipped when torch already uses that count: set `torch.set_num_threads`
globally beforehand to avoid resizing the thread pool on every call. `onnx_runner` runs an .onnx file
through OnnxRuntimeSession, with the inputs converted once. Both carry `.threads` so that the
measurement reports the thread count it ran at.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from prunefx.graph import Program
from prunefx.runtime.errors import MeasurementError
from prunefx.runtime.ort.session import (
    DEFAULT_THREADS,
    OnnxRuntimeSession,
    as_array,
    check_session_file,
)
from prunefx.runtime.ort.threads import threads_problem


class TorchRunner:
    """Calling it runs `program` once on fixed inputs, at `threads` torch threads, without autograd."""

    def __init__(self, program: Program, inputs: Sequence[torch.Tensor], threads: int):
        self.program = program
        self.inputs = tuple(inputs)
        self.threads = threads

    def __call__(self):
        previous = torch.get_num_threads()
        if previous != self.threads:
            torch.set_num_threads(self.threads)
        try:
            return self._run()
        finally:
            if previous != self.threads:
                torch.set_num_threads(previous)

    def _run(self):
        with torch.inference_mode():
            return self.program(*self.inputs)

    @contextlib.contextmanager
    def timed_calls(self) -> Iterator[Callable[[], object]]:
        """The call a timing loop makes (runtime/measure/latency.py): torch's thread count set for the loop, not
        around every call, where switching it twice a call would be timed too; as it was after the loop."""
        previous = torch.get_num_threads()

        def call():
            if torch.get_num_threads() != self.threads:  # only when the other side of a pair runs at another count
                torch.set_num_threads(self.threads)
            return self._run()

        try:
            yield call
        finally:
            torch.set_num_threads(previous)


class OnnxRunner:
    """Calling it runs an ONNX Runtime session once on fixed inputs; returns a list of arrays."""

    def __init__(self, session: OnnxRuntimeSession, inputs: Sequence[np.ndarray | torch.Tensor]):
        self.session = session
        self.threads = session.threads
        self._feed = session.feed(*inputs)  # converted once, not per call

    def __call__(self) -> list[np.ndarray]:
        return self.session.run_feed(self._feed)

    def timed_calls(self) -> contextlib.AbstractContextManager[Callable[[], list[np.ndarray]]]:
        """The call a timing loop makes, set up once around the loop (runtime/measure/latency.py)."""
        return self.session.timed_calls(self._feed)


def torch_runner(program: Program, inputs: Sequence[torch.Tensor] | None = None, *,
                 threads: int = DEFAULT_THREADS) -> TorchRunner:
    """Run `program` (its example inputs by default) in eval mode; a training Program is copied."""
    problem = threads_problem(threads)
    if problem is not None:  # torch's own refusal comes at the first call, in its words
        raise MeasurementError(f"torch_runner: {problem}")
    program = program.clone().eval() if program.training else program
    return TorchRunner(program, program.example_inputs if inputs is None else inputs, threads)


def onnx_runner(path: str | os.PathLike, inputs: Sequence[np.ndarray | torch.Tensor], *,
                threads: int = DEFAULT_THREADS, spinning: bool = True, flush_denormals: bool | None = None,
                checked: bool = False) -> OnnxRunner:
    """Run the .onnx file at `path` on `inputs` with ONNX Runtime on the CPU at `threads` threads
    (worker threads spinning between operators, ONNX Runtime's default, unless `spinning=False`), subnormal
    floats flushed to zero unless `flush_denormals=False` (default: `timing_flushes_denormals()`). `checked`: the
    file passed check_session_file just before (OnnxRunnerMaker's), not checked again."""
    flush = timing_flushes_denormals() if flush_denormals is None else flush_denormals
    return OnnxRunner(OnnxRuntimeSession(path, threads=threads, spinning=spinning, flush_denormals=flush,
                                         checked=checked), inputs)


class OnnxRunnerMaker:
    """Makes a fresh `onnx_runner` (a new session) on each call, for runtime/measure/latency.py's compare_rounds. It
    pickles, and it describes itself as plain data (`round_request`), so that a round in a fresh process builds
    its session without importing the prunefx package and with it torch (runtime/measure/rounds.py)."""

    def __init__(self, path: str | os.PathLike, inputs: Sequence[np.ndarray | torch.Tensor], *,
                 threads: int = DEFAULT_THREADS, spinning: bool = True, flush_denormals: bool | None = None):
        self.path = Path(path)
        self.inputs = tuple(as_array(value) for value in inputs)
        self.threads = threads
        self.spinning = spinning
        self.flush_denormals = timing_flushes_denormals() if flush_denormals is None else flush_denormals
        # the checks a session makes before it loads the file, once here rather than at each round's request
        check_session_file(self.path, self.threads)

    def __call__(self) -> OnnxRunner:
        return onnx_runner(self.path, self.inputs, threads=self.threads, spinning=self.spinning,
                           flush_denormals=self.flush_denormals, checked=True)

    def round_request(self) -> dict:
        """The session as plain data (its file was checked when this maker was made)."""
        return {"path": str(self.path), "inputs": list(self.inputs), "threads": self.threads,
                "spinning": self.spinning, "flush_denormals": self.flush_denormals}


def timing_flushes_denormals() -> bool:
    """Whether timing sessions flush subnormal floats to zero: yes unless PRUNEFX_KEEP_DENORMALS=1. Random-weight
    models underflow (EfficientNet-B1's activations reach 1e-14), x86 runs subnormal arithmetic many times
    slower, and which layers underflow changes with the widths: a search timed a 3.61x that another process
    measured 1.83x. GPUs and TensorRT flush them, and a trained model
    rarely produces them, so the flushed timing is the deployed one."""
    return os.environ.get("PRUNEFX_KEEP_DENORMALS", "") != "1"
