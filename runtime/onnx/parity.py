"""Numeric parity between a torch Program and its ONNX file, run by ONNX Runtime on the same inputs.

Lowering must not change what the model computes, whichever exporter produced the file. Outputs are
flattened with torch.utils._pytree (segmentation models return dicts), which is the order the ONNX
outputs follow. Each output's error is reported absolute and relative to its own largest torch magnitude, so
one tolerance works for logits and for probabilities alike, and the worst output is the model's parity: a
detector's scores in [0, 1] are not read on the scale of its boxes in pixels. The Program also runs on a second,
random input: outputs that it moves by less than the parity's tolerance (Parity.outputs_constant) would agree
with a file whose body computes anything, so such a parity proves nothing.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.utils._pytree as pytree

from prunefx.graph import Program
from prunefx.graph.heap import release_freed_memory
from prunefx.graph.program import require_program
from prunefx.runtime.errors import ParityError
from prunefx.runtime.model_precision import require_onnx_runtime_can_check
from prunefx.runtime.ort.session import OnnxRuntimeSession

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OutputParity:
    """Parity of one flattened output."""

    name: str
    shape: tuple[int, ...]
    max_abs_error: float
    output_scale: float

    @property
    def relative(self) -> float:
        return _relative(self.max_abs_error, self.output_scale)


@dataclass(frozen=True)
class Parity:
    """The worst output's (the largest relative error); `relative` = max_abs_error / output_scale."""

    max_abs_error: float
    output_scale: float
    relative: float
    outputs: list[OutputParity]
    # The outputs move by less than FLOAT_TOLERANCE of their magnitude on a second, random input (a head initialised
    # to zero, activations that vanish in random weights): the two sides then agree on what no layer before the
    # last changes, and prove nothing.
    outputs_constant: bool = False

    def within(self, tolerance: float) -> bool:
        return self.relative <= tolerance

    def entry(self) -> dict:
        """As report.json holds it (docs/reference/report.schema.json, `parity`)."""
        return {"max_abs_error": self.max_abs_error, "output_scale": self.output_scale, "relative": self.relative,
                "outputs_constant": self.outputs_constant}


def check_parity(program: Program, onnx_path: str | os.PathLike,
                 inputs: Sequence[torch.Tensor] | None = None, *, threads: int | None = None) -> Parity:
    """Run `program` (eval mode) and the ONNX file on `inputs` (example inputs by default); compare. ONNX
    Runtime runs on `threads` threads, by default as many as torch runs the program on."""
    require_program(program, "check_parity")
    require_onnx_runtime_can_check(program)
    inputs = program.example_inputs if inputs is None else _inputs_like_the_examples(program, inputs)
    expected = _outputs(program, inputs)
    session = OnnxRuntimeSession(onnx_path, threads=torch.get_num_threads() if threads is None else threads)
    actual = session.run(*inputs)
    names, file_name = session.output_names, session.path.name
    del session  # its copy of the weights
    release_freed_memory()
    if len(actual) != len(expected):
        raise ParityError(f"model '{program.name}' has {len(expected)} output(s) in torch but "
                          f"{len(actual)} in {file_name}")
    return _parity([_compare(name, want, got, program.name) for name, want, got in zip(names, expected, actual)],
                  program, inputs, expected)


# What an exact float export reads on the models prunefx verifies (docs/reference/verified.md): further than this,
# the file does not compute the model as ONNX Runtime runs it (an optimisation of its own, an exporter's mistake).
FLOAT_TOLERANCE = 1e-4


def warn_if_inexact(parity: Parity, file: str) -> bool:
    """Log a warning when a float file's `parity` is further than FLOAT_TOLERANCE; whether it was."""
    if parity.relative <= FLOAT_TOLERANCE:
        return False
    worst = _worst_output(parity.outputs)
    log.warning(f"{file} computes {parity.relative:.1e} away from the PyTorch model on ONNX Runtime ({worst.name}; "
                f"an exact export reads below {FLOAT_TOLERANCE:g}): check it on your runtime before deploying; "
                f"`prunefx check {file} --target ort` names patterns ONNX Runtime computes differently")
    return True


def warn_if_constant(parity: Parity, file: str) -> bool:
    """Log a warning when `parity` compared nothing (Parity.outputs_constant); whether it did."""
    if not parity.outputs_constant:
        return False
    log.warning(f"{file}: the model returns the same outputs, within {FLOAT_TOLERANCE:g} of their magnitude, for a "
                "second, random input (a head initialised to zero, or activations that vanish in random weights), so "
                "the parity check compares nothing; give the trained weights (--weights) to check the file")
    return True


def program_parity(reference: Program, other: Program, inputs: Sequence[torch.Tensor] | None = None) -> Parity:
    """`other` against `reference` on the same inputs (`reference`'s example inputs by default), measured as
    check_parity measures a file: how far a rewrite that is not exact (quantization) moves the outputs, the scale
    its files' parity is read on."""
    inputs = reference.example_inputs if inputs is None else tuple(inputs)
    expected, actual = (_outputs(program, inputs) for program in (reference, other))
    if len(actual) != len(expected):
        raise ParityError(f"model '{other.name}' has {len(actual)} output(s), '{reference.name}' {len(expected)}")
    return _parity([_compare(f"output {index}", want, got, reference.name)
                   for index, (want, got) in enumerate(zip(expected, actual))], reference, inputs, expected)


def _inputs_like_the_examples(program: Program, inputs) -> tuple[torch.Tensor, ...]:
    """`inputs` as a tuple, refused in one line unless they are tensors of the captured shapes (the graph's
    shapes are static: another shape fails inside torch's guards)."""
    if isinstance(inputs, torch.Tensor):
        raise ParityError("check_parity's inputs are a sequence of tensors, one per model input: (x,), not x")
    inputs = tuple(inputs)
    expected = [tuple(example.shape) for example in program.example_inputs]
    given = [tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__ for value in inputs]
    if given != expected:
        raise ParityError(f"check_parity's inputs are {given}, the program was captured at {expected}: "
                          "prunefx.graph.rebatch changes its batch")
    return inputs


def _outputs(program: Program, inputs) -> list[np.ndarray]:
    program = program.clone().eval() if program.training else program
    with torch.inference_mode():
        return [leaf.detach().cpu().numpy() for leaf in pytree.tree_leaves(program(*inputs))
                if isinstance(leaf, torch.Tensor)]


def _parity(outputs: list[OutputParity], program: Program, inputs, expected: list[np.ndarray]) -> Parity:
    """The worst of `outputs`, and whether `program`'s outputs move with its input (one more forward)."""
    worst = _worst_output(outputs)
    constant = _same_on_another_input(program, inputs, expected)
    return Parity(max_abs_error=worst.max_abs_error, output_scale=worst.output_scale, relative=worst.relative,
                  outputs=outputs, outputs_constant=constant)


def _same_on_another_input(program: Program, inputs, expected: list[np.ndarray]) -> bool:
    """Whether `program` returns `expected` again, within FLOAT_TOLERANCE of each output's magnitude, on random
    inputs of the same shapes (integer inputs, token ids or sizes, kept): whether its outputs depend on its input
    more than a parity can tell apart."""
    if not any(x.is_floating_point() for x in inputs):
        return False  # nothing to vary
    generator = torch.Generator().manual_seed(1)  # its own: the caller's random state stays as it was
    other = tuple(torch.randn(x.shape, generator=generator).to(x.dtype).to(x.device) if x.is_floating_point() else x
                  for x in inputs)
    again = _outputs(program, other)
    return len(again) == len(expected) and all(a.shape == b.shape and _within_tolerance(a, b)
                                               for a, b in zip(again, expected))


def _within_tolerance(again: np.ndarray, expected: np.ndarray) -> bool:
    return _relative(*_error_and_scale(expected, again)) <= FLOAT_TOLERANCE


def _worst_output(outputs: list[OutputParity]) -> OutputParity:
    return max(outputs, key=lambda output: output.relative)


def _compare(name: str, expected: np.ndarray, actual: np.ndarray, model: str) -> OutputParity:
    if expected.shape != actual.shape:
        raise ParityError(f"model '{model}': output {name} has shape {tuple(expected.shape)} in torch "
                          f"but {tuple(actual.shape)} in ONNX")
    # NaN or infinity (NaN weights, an overflow) compares as nothing: `inf - inf` is NaN and the parity
    # would read "relative inf" or pass silently. Say what is wrong instead.
    for side, values in (("torch", expected), ("ONNX Runtime", actual)):
        if values.dtype.kind in "fc" and not np.isfinite(values).all():
            raise ParityError(f"model '{model}': output {name} holds NaN or infinite values in {side} "
                              "(non-finite weights, or an overflow); parity cannot be checked")
    error, scale = _error_and_scale(expected, actual)
    return OutputParity(name=name, shape=tuple(expected.shape), max_abs_error=error, output_scale=scale)


def _error_and_scale(expected: np.ndarray, actual: np.ndarray) -> tuple[float, float]:
    """The largest absolute difference and the largest magnitude of `expected`, in float64 so that the difference
    itself adds no rounding error; integer outputs compare exactly."""
    expected, actual = expected.astype(np.float64), actual.astype(np.float64)
    return float(np.max(np.abs(expected - actual), initial=0.0)), float(np.max(np.abs(expected), initial=0.0))


def _relative(error: float, scale: float) -> float:
    # An all-zero output admits no relative error: exact is 0, anything else is infinitely wrong.
    if scale > 0:
        return error / scale
    return 0.0 if error == 0 else float("inf")
