"""Turn a model reference string into a model: the one place the CLI and the Python API resolve models.

A reference is one of
  torchvision:NAME             torchvision.models.get_model(NAME, weights=None)
  timm:NAME                    timm.create_model(NAME, pretrained=False)
  prunefx:NAME                 a small model for 28x28 gray images from prunefx.small_models
                               (resnet20, resnet56, mobilenetv2_small, vit_tiny_fmnist)
  ultralytics:NAME             an Ultralytics YOLO detector in its export-mode forward (decoded boxes and
                               class scores, no NMS): NAME is a model yaml shipped with the package
                               (yolov8n.yaml, yolo11n.yaml), built without weights, or a checkpoint .pt path
                               (Ultralytics checkpoints are pickled: load only files you trust).
                               Needs `pip install ultralytics` (AGPL-3.0, never a dependency of prunefx).
  path/to/file.py:FACTORY      FACTORY() from a Python file imported by its path
  path/to/model.pt2            a saved Program (loaded by the caller with prunefx.graph.Program.load)
Nothing is ever downloaded: builders get no weights, and pretrained weights come in through
`load_weights(module, FILE)` (the CLI's --weights FILE).
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import importlib.util
import inspect
import math
import re
import sys
from collections.abc import Mapping
from pathlib import Path

import timm
import torch
import torchvision
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

from prunefx import small_models
from prunefx.graph.errors import PrunefxError, first_line, printable
from prunefx.graph.program_metadata import MAX_INPUT_ELEMENTS
from prunefx.graph.safety.regular_files import require_regular_file

DEFAULT_IMAGE_SIZE = 224
_SHAPE_EXAMPLE = "1x3x224x224"
_REFERENCE_FORMS = ("torchvision:NAME, timm:NAME, prunefx:NAME, ultralytics:NAME, path/to/file.py:FACTORY "
                    "or a saved .pt2 program")
ULTRALYTICS_IMAGE_SIZE = 640  # the size Ultralytics trains and predicts at


class ModelReferenceError(PrunefxError):
    """A model reference could not be turned into a model."""


class WeightsError(PrunefxError):
    """A weights file could not be loaded into a model."""


class InputShapeError(PrunefxError):
    """An input shape string is malformed."""


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A resolved reference: an eval-mode module, or the path of a saved Program (never both)."""

    module: torch.nn.Module | None
    program_path: Path | None
    name: str
    # None for a saved Program: it carries the example inputs it was captured with.
    default_input_shape: tuple[int, ...] | None

    @property
    def kind(self) -> str:
        return "program" if self.program_path is not None else "module"


def build_model(ref: str, *, image_size: int | None = None) -> ModelSpec:
    """Resolve `ref`; `image_size` builds fixed-size models (ViTs) for a smaller square input."""
    if image_size is not None and image_size < 1:
        raise ModelReferenceError(f"image size {image_size} is not a positive number of pixels")
    ref = ref.strip()
    source, _, name = ref.partition(":")
    if source in _SOURCES:
        if not name:
            raise ModelReferenceError(f"model reference {ref!r} names no model: write {source}:NAME")
        return _SOURCES[source](name, image_size)
    if ref.endswith(".pt2"):
        # image_size is ignored: the caller compares its shape with the one the Program was saved with.
        return _saved_program(Path(ref))
    # rpartition: the path itself may contain ':' (a Windows drive letter).
    path, sep, factory = ref.rpartition(":")
    if sep and path.endswith(".py"):
        return _file_model(Path(path), factory, image_size)
    if ref.endswith(".py"):
        raise ModelReferenceError(f"model reference {ref!r} names no factory: write {ref}:FACTORY")
    raise ModelReferenceError(f"cannot read model reference {ref!r}: use {_REFERENCE_FORMS}")


def _unknown(source: str, name: str, candidates: list[str]) -> ModelReferenceError:
    close = difflib.get_close_matches(name, candidates, n=3, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}?" if close else f"see {source}'s list_models()"
    return ModelReferenceError(f"unknown {source} model {name!r}; {hint}")


def _torchvision_model(name: str, image_size: int | None) -> ModelSpec:
    available = torchvision.models.list_models()
    if name not in available:
        raise _unknown("torchvision", name, available)
    kwargs: dict = {"weights": None}
    # Segmentation and detection builders otherwise download ImageNet backbone weights.
    if "weights_backbone" in inspect.signature(torchvision.models.get_model_builder(name)).parameters:
        kwargs["weights_backbone"] = None
    # torchvision ViTs size their position embedding from image_size; Swin needs nothing (it pads).
    if image_size is not None and name.startswith("vit_"):
        kwargs["image_size"] = image_size
    module = torchvision.models.get_model(name, **kwargs).eval()
    size = image_size or getattr(module, "image_size", DEFAULT_IMAGE_SIZE)
    return ModelSpec(module, None, f"torchvision:{name}", (1, 3, size, size))


def _timm_pretrained_cfg(name: str):
    try:
        if timm.is_model(name):
            return timm.get_pretrained_cfg(name)
    except RuntimeError:
        pass  # a known architecture with an unknown pretrained tag ("resnet18.bogus")
    candidates = timm.list_pretrained() if "." in name else timm.list_models()
    raise _unknown("timm", name, candidates)


def _timm_model(name: str, image_size: int | None) -> ModelSpec:
    cfg = _timm_pretrained_cfg(name)
    kwargs = {}
    # timm marks models whose layers depend on the input size (ViT, DeiT, Swin, BEiT, Mixer, ...);
    # only those take img_size, and CNNs reject it.
    if image_size is not None and cfg is not None and cfg.fixed_input_size:
        kwargs["img_size"] = image_size
    module = timm.create_model(name, pretrained=False, **kwargs).eval()
    size = (3, image_size, image_size) if image_size else timm.data.resolve_model_data_config(module)["input_size"]
    shape = (1, *size)
    return ModelSpec(module, None, f"timm:{name}", shape)


def _prunefx_model(name: str, image_size: int | None) -> ModelSpec:
    if name not in small_models.MODELS:
        raise _unknown("prunefx", name, small_models.list_models())
    build = small_models.MODELS[name]
    size = image_size or small_models.FMNIST_IMAGE_SIZE
    if name in small_models.FIXED_INPUT_SIZE:
        try:
            module = build(image_size=size)
        except ValueError as exc:
            raise ModelReferenceError(f"prunefx:{name} cannot be built for {size}x{size} images: {exc}") from exc
    else:
        module = build()
    return ModelSpec(module.eval(), None, f"prunefx:{name}", (1, small_models.FMNIST_CHANNELS, size, size))


def _ultralytics_model(name: str, image_size: int | None) -> ModelSpec:
    module = ultralytics_detector(name)
    size = image_size or ULTRALYTICS_IMAGE_SIZE
    stride = int(max(module.stride))
    if size % stride:
        raise ModelReferenceError(f"ultralytics:{name} takes images whose size is a multiple of {stride}, not {size}")
    return ModelSpec(module, None, f"ultralytics:{name}", (1, 3, size, size))


def ultralytics_detector(name: str) -> torch.nn.Module:
    """An Ultralytics DetectionModel from a shipped yaml (no weights) or a checkpoint, set to its export-mode
    forward (what Ultralytics' own ONNX export traces): one tensor of decoded boxes and class scores."""
    try:
        from ultralytics.nn.tasks import load_checkpoint
    except ImportError as error:  # AGPL-3.0: installed by the user (or `pip install -e .[dev]`), never by us
        raise ModelReferenceError(f"ultralytics:{name} needs the ultralytics package: pip install ultralytics "
                                  f"({first_line(error)})") from error
    if name.endswith((".yaml", ".yml")):
        try:
            model = _ultralytics_model_class(name)(name, verbose=False)
        except Exception as error:  # a missing or malformed yaml surfaces as many types
            raise ModelReferenceError(f"ultralytics cannot build {name}: {first_line(error)}") from error
    elif name.endswith(".pt"):
        if not Path(name).is_file():
            raise ModelReferenceError(f"ultralytics checkpoint {name} not found")
        try:
            model = load_checkpoint(name, device="cpu")[0]
        except Exception as error:
            raise ModelReferenceError(f"ultralytics cannot load {name}: {first_line(error)}") from error
    else:
        raise ModelReferenceError(f"ultralytics:{name}: name a model yaml (yolov8n.yaml) or a checkpoint .pt")
    # Ultralytics saves its EMA copy with every parameter frozen: prunefx compresses and trains this model.
    model = model.float().eval().requires_grad_(True)
    from prunefx.interop.ultralytics_bridge import register_resizers
    register_resizers()  # so that prunefx.to_module (prune --module) can write a pruned YOLO back
    if type(model).__name__ == "ClassificationModel":
        for head in model.modules():  # export mode: one tensor of class probabilities, not (probabilities, logits)
            if hasattr(head, "export") and type(head).__name__ == "Classify":
                head.export = True
        return model
    return _export_mode(model, name)


def _ultralytics_model_class(name: str) -> type:
    """DetectionModel, or ClassificationModel for a classification yaml (yolo11n-cls.yaml)."""
    from ultralytics.nn.tasks import ClassificationModel, DetectionModel, guess_model_task
    return ClassificationModel if guess_model_task(name) == "classify" else DetectionModel


def _export_mode(model: torch.nn.Module, name: str) -> torch.nn.Module:
    heads = [m for m in model.modules() if hasattr(m, "export") and hasattr(m, "stride") and hasattr(m, "reg_max")]
    if len(heads) != 1 or getattr(heads[0], "end2end", False):
        raise ModelReferenceError(f"ultralytics:{name} has no single (non end-to-end) Detect head; prunefx "
                                  "takes Ultralytics detection models with a Detect head (YOLOv8, YOLO11) and "
                                  "classification models")
    head = heads[0]
    head.export, head.format = True, "onnx"
    # Anchors are computed inside the graph for the captured size (dynamic), from Python-number strides: a
    # stride tensor would be read with .item() there, which shape propagation cannot follow.
    head.dynamic = True
    head.stride = [float(s) for s in head.stride]
    return model


_SOURCES = {"torchvision": _torchvision_model, "timm": _timm_model, "prunefx": _prunefx_model,
            "ultralytics": _ultralytics_model}


def _regular(path: Path, what: str, error: type[PrunefxError]) -> None:
    """A FIFO, a device (/dev/zero) or a folder is said to be one, not "not found" (and never read)."""
    try:
        require_regular_file(path, what)
    except PrunefxError as problem:
        raise error(str(problem)) from None


def _saved_program(path: Path) -> ModelSpec:
    if not path.exists():
        raise ModelReferenceError(f"saved program {path} not found")
    _regular(path, "saved program", ModelReferenceError)
    return ModelSpec(None, path, path.stem, None)


def _import_file(path: Path):
    # One module name per file (two model.py files in different folders must not collide),
    # registered in sys.modules before running it, as dataclasses and pickling look modules up there.
    digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:10]
    stem = re.sub(r"\W", "_", path.stem)
    module_name = f"prunefx_user_model_{stem}_{digest}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except SystemExit as exc:
        del sys.modules[module_name]
        raise ModelReferenceError(f"importing model file {path} called sys.exit({exc.code!r})") from exc
    except Exception as exc:
        del sys.modules[module_name]
        raise ModelReferenceError(f"importing model file {path} failed: {type(exc).__name__}: {exc}") from exc
    return module


def _file_model(path: Path, factory: str, image_size: int | None) -> ModelSpec:
    if not factory.isidentifier():
        raise ModelReferenceError(f"{factory!r} after {path}: is not a Python function name")
    if not path.exists():
        raise ModelReferenceError(f"model file {path} not found")
    _regular(path, "model file", ModelReferenceError)
    source = _import_file(path)
    build = getattr(source, factory, None)
    if not callable(build):
        names = [n for n in vars(source) if callable(getattr(source, n)) and not n.startswith("_")]
        close = difflib.get_close_matches(factory, names, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ModelReferenceError(f"model file {path} has no function {factory!r}{hint}")
    try:
        module = build()
    except SystemExit as exc:  # user code asking to end the process is a failed build, not prunefx's exit
        raise ModelReferenceError(f"{path}:{factory}() called sys.exit({exc.code!r}) instead of returning "
                                  "a model") from exc
    except Exception as exc:
        raise ModelReferenceError(f"{path}:{factory}() failed: {type(exc).__name__}: {exc}") from exc
    if not isinstance(module, torch.nn.Module):
        raise ModelReferenceError(
            f"{path}:{factory}() returned {type(module).__name__}; it must return a torch.nn.Module")
    size = image_size or DEFAULT_IMAGE_SIZE  # the factory takes no arguments: image_size only sets the shape
    return ModelSpec(module.eval(), None, f"{path.stem}:{factory}", (1, 3, size, size))


# An example input is allocated from the shape: bound it before torch tries, with the bound a saved
# Program's inputs get (graph/program_metadata.py says why 2**28 elements).
MAX_INPUT_DIMS = 8


def parse_input_shape(text: str) -> tuple[int, ...]:
    """"1x3x224x224" -> (1, 3, 224, 224); every dimension a positive integer, the whole allocatable."""
    shown = printable(repr(text))[:60]
    if not isinstance(text, str) or not text.strip():
        raise InputShapeError(f"input shape is empty; write it like {_SHAPE_EXAMPLE}")
    parts = text.strip().lower().split("x")
    if len(parts) > MAX_INPUT_DIMS:
        raise InputShapeError(f"input shape {shown} has {len(parts)} dimensions; at most {MAX_INPUT_DIMS}")
    dims = []
    for part in parts:
        part = part.strip()
        # isascii: str.isdigit also accepts digits such as '²' that int() rejects; 19 digits bound int().
        if not (part.isascii() and part.isdigit()) or len(part) > 18 or int(part) == 0:
            raise InputShapeError(f"input shape {shown}: {printable(repr(part))[:30]} is not a positive integer; "
                                  f"write it like {_SHAPE_EXAMPLE}")
        dims.append(int(part))
    return check_input_shape(tuple(dims), "input shape")


def check_input_shape(shape: tuple[int, ...], what: str) -> tuple[int, ...]:
    """`shape` as given, when an input of it can be allocated; InputShapeError otherwise."""
    if any(dim < 1 for dim in shape):
        raise InputShapeError(f"{what} {shape} has a dimension below 1")
    if math.prod(shape) > MAX_INPUT_ELEMENTS:
        raise InputShapeError(f"{what} {'x'.join(map(str, shape))} has {math.prod(shape):.3g} elements, more than "
                              f"prunefx allocates for an example input (2**28)")
    return shape


def load_weights(module: torch.nn.Module, path: str | Path) -> torch.nn.Module:
    """Load a state dict file (raw, or under 'state_dict' / 'model') into `module`; return it."""
    path = Path(path)
    if not path.exists():
        raise WeightsError(f"weights file {path} not found")
    _regular(path, "weights file", WeightsError)
    try:
        # weights_only: a weights file must never run code on load.
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises many types (UnpicklingError, KeyError, RuntimeError)
        raise WeightsError(
            f"cannot read {path} as a state dict ({type(exc).__name__}); save it with "
            "torch.save(model.state_dict(), FILE)") from exc
    state = _unwrap_state_dict(loaded, path)
    # Checkpoints saved from DataParallel / DistributedDataParallel prefix every key with 'module.'.
    consume_prefix_in_state_dict_if_present(state, "module.")
    _check_fits(module, state, path)
    # strict=False only for num_batches_tracked, which older files (torchvision's own) may lack.
    module.load_state_dict(state, strict=False)
    return module


def _unwrap_state_dict(loaded, path: Path):
    if isinstance(loaded, Mapping):
        for key in ("state_dict", "model"):
            if isinstance(loaded.get(key), Mapping):
                loaded = loaded[key]
                break
    if not isinstance(loaded, Mapping) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        keys = ", ".join(map(str, list(loaded)[:5])) if isinstance(loaded, Mapping) else type(loaded).__name__
        raise WeightsError(f"{path} holds no state dict of tensors (found: {keys})")
    return loaded


def _few(keys: list[str]) -> str:
    more = f", ... ({len(keys)} in all)" if len(keys) > 3 else ""
    return ", ".join(keys[:3]) + more


def _check_fits(module: torch.nn.Module, state: Mapping, path: Path) -> None:
    expected = module.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k} {tuple(state[k].shape)} vs model {tuple(v.shape)}" for k, v in expected.items()
             if k in state and isinstance(v, torch.Tensor) and state[k].shape != v.shape]
    problems = [f"{label}: {_few(keys)}" for label, keys in
                (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", wrong)) if keys]
    if problems:
        raise WeightsError(f"weights {path.name} do not fit the model; " + "; ".join(problems))
