"""What a model reference resolves to (ModelSpec), and the errors of resolving models, shapes and weights."""

from __future__ import annotations

import dataclasses
import difflib
from pathlib import Path

import torch

from prunefx.graph.errors import PrunefxError
from prunefx.graph.safety.regular_files import require_regular_file

DEFAULT_IMAGE_SIZE = 224


class ModelReferenceError(PrunefxError):
    """A model reference could not be turned into a model."""


class WeightsError(PrunefxError):
    """A weights file could not be loaded into a model."""


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A resolved reference: an eval-mode module, or the path of a saved Program (never both)."""

    module: torch.nn.Module | None
    program_path: Path | None
    name: str
    # None for a saved Program: it carries the example inputs it was captured with.
    default_input_shape: tuple[int, ...] | None
    # The (mean, std) its images are normalised with where the library says (timm's pretrained configuration)
    normalisation: tuple[tuple[float, ...], tuple[float, ...]] | None = None

    @property
    def kind(self) -> str:
        return "program" if self.program_path is not None else "module"


def unknown_model(source: str, name: str, candidates: list[str]) -> ModelReferenceError:
    close = difflib.get_close_matches(name, candidates, n=3, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}?" if close else f"see {source}'s list_models()"
    return ModelReferenceError(f"unknown {source} model {name!r}; {hint}")


def require_file(path: Path, what: str, error: type[PrunefxError]) -> None:
    """A FIFO, a device (/dev/zero) or a folder is said to be one, not "not found" (and never read)."""
    try:
        require_regular_file(path, what)
    except PrunefxError as problem:
        raise error(str(problem)) from None
