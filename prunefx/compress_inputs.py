"""The model and data a compress run works on (prunefx/compression.py): the data set's loaders and the model
captured (or loaded) at its input shape, its images normalised with the statistics the model expects
(prunefx/image_statistics.py), refused before any work where the two do not fit (input shape, classes, a
half-precision Program compress could not train)."""

from __future__ import annotations

import contextlib

from prunefx.data.load import load_data
from prunefx.data.normalise import Statistics, normalised_with
from prunefx.data.splits import DETECTION, FASHION_MNIST, IMAGENET_SAMPLE, DataSplits, scene_spec
from prunefx.data.unlabelled import against_dense
from prunefx.graph import Program
from prunefx.graph.errors import PrunefxError
from prunefx.loading import program_from_reference
from prunefx.models import build_model
from prunefx.models.references import reference_normalisation
from prunefx.runtime.model_precision import other_than_float32


def _rgb(reference: str) -> bool:
    shape = build_model(reference).default_input_shape
    return shape is not None and len(shape) == 4 and shape[1] == 3


# options of a data set on disk (format_data's) that a named data set does not read
FILE_OPTIONS = ("data_format", "image_size", "palette")


def load_model_and_data(reference: str, data: str, *, batch_size: int, weights: str | None = None,
                        validation: int = 5000, files: dict | None = None, seed: int = 0,
                        normalisation: Statistics | None = None) -> tuple[Program, DataSplits]:
    """The data set's loaders at `batch_size`, and the model captured (or loaded) for input shape
    (batch_size, *the data's image shape). Fashion-MNIST is gray; for a model that takes RGB its
    channel is repeated three times. `files`: options of a data set on disk (data_formats.format_data:
    data_format, num_workers, image_size). `seed`: the data's draws (validation split, order,
    augmentation) of every data set that trains; imagenet-sample is a fixed test set. Images other than
    Fashion-MNIST's are normalised with `normalisation` (mean, std), else the model's own (a timm model's, a saved
    Program's), else ImageNet's; the Program returned records the first two."""
    saved = program_from_reference(reference, weights=weights, writes_onnx=True) if reference.endswith(".pt2") else None
    if saved is not None:
        require_float32_training(saved)  # before the data is read (and, unlabelled, run through the model)
    options = {}
    named = str(data) in (FASHION_MNIST, IMAGENET_SAMPLE) or scene_spec(data) is not None
    given = [key for key in FILE_OPTIONS if (files or {}).get(key) is not None]
    if named and given:  # a named data set has its own layout, size and labels: the option would go unread
        raise PrunefxError(f"--{given[0].replace('_', '-')} applies to a data set on disk, not {data}")
    if str(data) == FASHION_MNIST or scene_spec(data) is not None:
        rgb = saved.example_inputs[0].shape[1] == 3 if saved is not None else _rgb(reference)
        options = {"validation": validation, "channels": 3 if rgb else 1, "seed": seed}
    elif str(data) != IMAGENET_SAMPLE:
        options = {**{key: value for key, value in (files or {}).items() if value is not None}, "seed": seed}
    if normalisation is None:
        normalisation = saved.normalisation if saved is not None else reference_normalisation(reference)
    with normalised_with(*normalisation) if normalisation is not None else contextlib.nullcontext():
        splits = load_data(data, batch_size, **options)
    shape = (batch_size, *splits.input_shape)
    text = "x".join(map(str, shape))
    if saved is not None:
        captured = tuple(saved.example_inputs[0].shape)
        if captured != shape:
            hint = f"; give --batch-size {captured[0]}" if captured[1:] == shape[1:] else ""
            raise PrunefxError(f"{reference} was captured for input shape {'x'.join(map(str, captured))}, but "
                               f"{data} at batch size {batch_size} gives {text}{hint}")
        program = saved
    else:
        program = program_from_reference(reference, weights=weights, input_shape=text)
    program.normalisation = normalisation
    if not splits.classes:  # unlabelled images: evaluation labels are the dense model's predictions
        splits = against_dense(program, splits)
    _check_classes(program, splits, data)
    return program.eval(), splits


def require_float32_training(program: Program) -> None:
    """compress trains its model (half-precision weights would need a float32 copy to take small updates) and
    times the result on ONNX Runtime, which measures float32 models: anything else is refused before any work."""
    other = other_than_float32(program)
    if other:
        raise PrunefxError(f"compress trains and measures float32 models, and {program.name} holds "
                           f"{' and '.join(other)} tensors: save the Program in float32 (a budget's "
                           "--precision fp16 or bf16 times it in half precision on a GPU backend)")


def _check_classes(program: Program, splits: DataSplits, data: str) -> None:
    if splits.task == DETECTION:  # a detector's output mixes box terms with class scores, in its own layout
        return
    shapes = program.output_shapes
    if shapes and len(shapes[0]) >= 2 and shapes[0][1] != splits.num_classes:
        raise PrunefxError(f"{program.name} outputs {shapes[0][1]} classes but {data} has {splits.num_classes}")
