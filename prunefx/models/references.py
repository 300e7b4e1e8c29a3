"""Turn a model reference string into a model: the one place the CLI and the Python API resolve models.

A reference is `torchvision:NAME`, `timm:NAME`, `prunefx:NAME` (prunefx.models.small), `ultralytics:NAME`
(a YOLO in its export-mode forward; a model yaml, or a checkpoint .pt, pickled: load only files you trust;
needs `pip install ultralytics`, never a dependency), `path/to/file.py:FACTORY` or a saved `.pt2`. Nothing is
ever downloaded: builders get no weights (`load_weights`, the CLI's --weights, brings them), and a builder's
random weights come from seed 0 with the caller's random state left as it was. See docs/reference/cli.md.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import torch

from prunefx.models import small
from prunefx.models.spec import (
    DEFAULT_IMAGE_SIZE,
    ModelReferenceError,
    ModelSpec,
    require_file,
    unknown_model,
)
from prunefx.models.ultralytics_models import ultralytics_model
from prunefx.models.user_files import file_model
from prunefx.reference_forms import file_factory

_REFERENCE_FORMS = ("torchvision:NAME, timm:NAME, prunefx:NAME, ultralytics:NAME, path/to/file.py:FACTORY "
                    "or a saved .pt2 program")


RANDOM_WEIGHTS_SEED = 0


def build_model(ref: str, *, image_size: int | None = None) -> ModelSpec:
    """Resolve `ref`; `image_size` builds fixed-size models (ViTs) for a smaller square input."""
    with torch.random.fork_rng(devices=[]):
        # the CPU generator alone: torch.manual_seed also seeds every GPU, which fork_rng(devices=[]) leaves seeded
        torch.default_generator.manual_seed(RANDOM_WEIGHTS_SEED)
        return _build(ref, image_size)


def _build(ref: str, image_size: int | None) -> ModelSpec:
    if image_size is not None and image_size < 1:
        raise ModelReferenceError(f"image size {image_size} is not a positive number of pixels")
    ref = ref.strip()
    source, _, name = ref.partition(":")
    if source in _SOURCES:
        if not name:
            raise ModelReferenceError(f"model reference {ref!r} names no model: write {source}:NAME")
        return _SOURCES[source](name, image_size)
    # File references expand `~` as a shell would: one quoted or read from a script reaches us with it.
    if ref.endswith(".pt2"):
        # image_size is ignored: the caller compares its shape with the one the Program was saved with.
        return _saved_program(Path(ref).expanduser())
    file_reference = file_factory(ref)
    if file_reference is not None:
        path, factory = file_reference
        return file_model(Path(path).expanduser(), factory, image_size)
    if ref.endswith(".py"):
        raise ModelReferenceError(f"model reference {ref!r} names no factory: write {ref}:FACTORY")
    raise ModelReferenceError(f"cannot read model reference {ref!r}: use {_REFERENCE_FORMS}")


def _torchvision_model(name: str, image_size: int | None) -> ModelSpec:
    import torchvision  # imported when a torchvision model is asked for (seconds), like timm below

    available = torchvision.models.list_models()
    if name not in available:
        raise unknown_model("torchvision", name, available)
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
    import timm

    try:
        if timm.is_model(name):
            return timm.get_pretrained_cfg(name)
    except RuntimeError:
        pass  # a known architecture with an unknown pretrained tag ("resnet18.bogus")
    candidates = timm.list_pretrained() if "." in name else timm.list_models()
    raise unknown_model("timm", name, candidates)


def _timm_model(name: str, image_size: int | None) -> ModelSpec:
    import timm

    cfg = _timm_pretrained_cfg(name)
    kwargs = {}
    # timm marks models whose layers depend on the input size (ViT, DeiT, Swin, BEiT, Mixer, ...);
    # only those take img_size, and CNNs reject it.
    if image_size is not None and cfg is not None and cfg.fixed_input_size:
        kwargs["img_size"] = image_size
    module = timm.create_model(name, pretrained=False, **kwargs).eval()
    size = (3, image_size, image_size) if image_size else timm.data.resolve_model_data_config(module)["input_size"]
    shape = (1, *size)
    return ModelSpec(module, None, f"timm:{name}", shape, normalisation=_timm_normalisation(cfg))


def reference_normalisation(ref: str) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """The (mean, std) the model `ref` names expects of its images, where its library says (timm), without
    building the model; None otherwise."""
    source, _, name = ref.partition(":")
    return _timm_normalisation(_timm_pretrained_cfg(name)) if source == "timm" and name else None


def _timm_normalisation(cfg) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """The mean and std the model's pretrained weights were trained with (0.5 for many ViTs, CLIP's own), where
    its configuration names them."""
    mean, std = getattr(cfg, "mean", None), getattr(cfg, "std", None)
    if mean is None or std is None:
        return None
    return tuple(map(float, mean)), tuple(map(float, std))


def _prunefx_model(name: str, image_size: int | None) -> ModelSpec:
    if name not in small.MODELS:
        raise unknown_model("prunefx", name, small.list_models())
    build = small.MODELS[name]
    size = image_size or small.FMNIST_IMAGE_SIZE
    if name in small.FIXED_INPUT_SIZE:
        try:
            module = build(image_size=size)
        except ValueError as exc:
            raise ModelReferenceError(f"prunefx:{name} cannot be built for {size}x{size} images: {exc}") from exc
    else:
        module = build()
    return ModelSpec(module.eval(), None, f"prunefx:{name}", (1, small.FMNIST_CHANNELS, size, size))


_SOURCES = {"torchvision": _torchvision_model, "timm": _timm_model, "prunefx": _prunefx_model,
            "ultralytics": ultralytics_model}


def _saved_program(path: Path) -> ModelSpec:
    if not path.exists():
        raise ModelReferenceError(f"saved program {path} not found")
    require_file(path, "saved program", ModelReferenceError)
    return ModelSpec(None, path, path.stem, None)
