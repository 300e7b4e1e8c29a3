"""Turn a model reference from the command line (or a script) into a Program.

`torchvision:NAME`, `timm:NAME`, `prunefx:NAME` and `file.py:factory` are built, given weights when
asked, and captured on a random input of the requested shape; a saved `.pt2` is loaded as it was saved.
"""

from __future__ import annotations

import torch

from prunefx.graph import Program, capture
from prunefx.graph.errors import PrunefxError
from prunefx.image_statistics import record_given_statistics
from prunefx.models import build_model, load_weights, parse_input_shape
from prunefx.models.input_shapes import check_input_shape
from prunefx.runtime.model_precision import require_onnx_runtime_can_check


def _square_image_size(shape: tuple[int, ...] | None) -> int | None:
    # Fixed-size models (ViTs) must be built for the input they will get.
    if shape is not None and len(shape) == 4 and shape[2] == shape[3]:
        return shape[2]
    return None


def program_from_reference(reference: str, *, weights: str | None = None, input_shape: str | None = None,
                           writes_onnx: bool = False, batch: int | None = None) -> Program:
    """The Program of `reference`; `batch`: a model built here is captured at that batch when no `input_shape` is
    given (its default shape's batch replaced)."""
    return model_and_program(reference, weights=weights, input_shape=input_shape, keep_model=False,
                             writes_onnx=writes_onnx, batch=batch)[1]


def model_and_program(reference: str, *, weights: str | None = None, input_shape: str | None = None,
                      keep_model: bool = True, writes_onnx: bool = False,
                      batch: int | None = None) -> tuple[torch.nn.Module | None, Program]:
    """The model built from `reference` (None for a saved .pt2, which holds no Python module, and with
    keep_model=False, when the Program takes its tensors without a copy) and the Program captured from it: the
    module the write-back (prunefx/interop/write_back.py) copies the pruned tensors into. `writes_onnx`: the
    command delivers an ONNX file checked by ONNX Runtime, so a Program it cannot run is refused before any work."""
    shape = parse_input_shape(input_shape) if input_shape is not None else None
    spec = build_model(reference, image_size=_square_image_size(shape))
    if spec.kind == "program":
        if weights:
            raise PrunefxError("--weights cannot be used with a saved .pt2 program: its weights are inside it")
        program = Program.load(spec.program_path)
        saved = tuple(program.example_inputs[0].shape)
        if shape is not None and shape != saved:
            raise PrunefxError(f"{spec.program_path} was captured for input shape {'x'.join(map(str, saved))}; "
                               "a saved program cannot change its input shape")
        if writes_onnx:
            require_onnx_runtime_can_check(program)
        return None, program.eval()
    if weights:
        load_weights(spec.module, weights)
    if shape is None:
        default = tuple(spec.default_input_shape)
        shape = check_input_shape((batch, *default[1:]), "--batch's input shape") if batch else default
    generator = torch.Generator().manual_seed(0)
    program = capture(spec.module.eval(), torch.randn(shape, generator=generator), name=spec.name,
                      copy_weights=keep_model).eval()
    if writes_onnx:  # a model built in bfloat16 too, as a saved one: before the pruning and the export
        require_onnx_runtime_can_check(program)
    program.normalisation = spec.normalisation
    return (spec.module if keep_model else None), program


def program_from_args(args, *, writes_onnx: bool = False) -> Program:
    program = program_from_reference(args.model, weights=args.weights, input_shape=args.input_shape,
                                     writes_onnx=writes_onnx)
    record_given_statistics(args, program)
    return program
