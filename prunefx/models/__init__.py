"""Models from reference strings (`torchvision:resnet18`, `prunefx:resnet20`, `file.py:FACTORY`, ...), their
input shapes and weights files: the one place the CLI and the Python API resolve models.

    references.py          build_model: a reference string -> ModelSpec (the forms are listed there)
    ultralytics_models.py  `ultralytics:NAME` (AGPL-3.0: imported only when named)
    user_files.py          `path/to/file.py:FACTORY`
    input_shapes.py        "1x3x224x224" -> a bounded shape
    weights.py             a state dict file checked against the model, then loaded
    small/                 compact classifiers for 28x28 gray images (`prunefx:NAME`)
"""

from prunefx.models.input_shapes import InputShapeError, check_input_shape, parse_input_shape
from prunefx.models.references import build_model
from prunefx.models.spec import DEFAULT_IMAGE_SIZE, ModelReferenceError, ModelSpec, WeightsError
from prunefx.models.ultralytics_models import prepare_ultralytics, ultralytics_detector
from prunefx.models.weights import load_weights

__all__ = [
    "DEFAULT_IMAGE_SIZE", "InputShapeError", "ModelReferenceError", "ModelSpec", "WeightsError", "build_model",
    "check_input_shape", "load_weights", "parse_input_shape", "prepare_ultralytics", "ultralytics_detector",
]
