"""verify(program): the validity checks run after every pass.

1. the fx graph lints (well-formed, topologically ordered);
2. shape propagation succeeds on the example inputs and the output shapes are those at capture;
3. in eval mode, a real run gives finite outputs (training mode is checked by shapes only, so
   verification never moves batch-norm statistics);
4. the module re-exports with torch.export.
"""

from __future__ import annotations

import torch
import torch.utils._pytree as pytree

from prunefx.graph.errors import VerificationError, first_line
from prunefx.graph.program import Program, current_output_shapes, require_program


def _check_lint(program: Program) -> None:
    try:
        program.graph.lint()
    except Exception as error:
        raise VerificationError(f"graph of '{program.name}' is malformed: {error}") from error


def _check_shapes(program: Program) -> None:
    try:
        program.refresh_meta()
    except Exception as error:
        raise VerificationError(f"shape propagation failed on '{program.name}': "
                                f"{first_line(error)}") from error
    shapes = current_output_shapes(program.module)
    if shapes != list(program.output_shapes):
        raise VerificationError(f"output shapes of '{program.name}' changed: {program.output_shapes} -> {shapes}")


def _check_finite(program: Program) -> list[torch.Tensor]:
    outputs = [leaf for leaf in pytree.tree_leaves(program.run_example()) if isinstance(leaf, torch.Tensor)]
    for index, output in enumerate(outputs):
        if output.is_floating_point() and not torch.isfinite(output).all():
            raise VerificationError(f"output {index} of '{program.name}' has NaN or infinite values")
    return outputs


def verify(program: Program, *, reexport: bool = True) -> None:
    """Raise VerificationError with the reason when `program` is not valid; return None when it is."""
    verified_outputs(program, reexport=reexport)


def verified_outputs(program: Program, *, reexport: bool = True) -> list[torch.Tensor] | None:
    """verify(program), returning the output tensors of its eval-mode run on the example inputs (None in training
    mode, which is checked by shapes only): the Pipeline compares them for exactness instead of running again."""
    require_program(program, "verify")
    if not isinstance(reexport, bool):
        raise VerificationError(f"verify's reexport is True or False, not {reexport!r:.40}")
    _check_lint(program)
    _check_shapes(program)
    outputs = None if program.training else _check_finite(program)
    if reexport:
        program.export()
    return outputs
