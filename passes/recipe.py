"""Recipes: YAML files that spell a Pipeline declaratively.

    name: fold-only            # optional
    verify: full               # full | shapes | none (default full)
    passes:
      - fold_batchnorm         # a pass with its default config
      - fold_batchnorm: {}     # or with a config mapping

The CLI and the Python API build the same Pipeline from this.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from prunefx.graph.errors import PrunefxError, first_line
from prunefx.passes.pipeline import Pipeline, Step
from prunefx.passes.registry import get_pass


class RecipeError(PrunefxError):
    pass


def _step(entry, index: int) -> Step:
    if isinstance(entry, str):
        return Step(get_pass(entry), {})
    if isinstance(entry, dict) and len(entry) == 1:
        (name, config), = entry.items()
        config = {} if config is None else config
        if not isinstance(config, dict):
            raise RecipeError(f"step {index + 1} ('{name}'): its config must be a mapping, not {type(config).__name__}")
        return Step(get_pass(name), config)
    raise RecipeError(f"step {index + 1}: expected a pass name or a one-key mapping 'name: {{config}}', got {entry!r}")


def pipeline_from_spec(spec: dict, *, progress: bool = False) -> Pipeline:
    if not isinstance(spec, dict) or not isinstance(spec.get("passes"), list):
        raise RecipeError("a recipe is a mapping with a 'passes' list")
    steps = [_step(entry, index) for index, entry in enumerate(spec["passes"])]
    return Pipeline(steps, verify=spec.get("verify", "full"), progress=progress)


def read_recipe(path: str | Path) -> dict:
    """The recipe file's mapping, as written (not yet checked: `pipeline_from_spec` does that)."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"no such recipe file: {path}")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise RecipeError(f"recipe {path} is not valid YAML: {first_line(error)}") from error


def load_recipe(path: str | Path, *, progress: bool = False) -> Pipeline:
    return pipeline_from_spec(read_recipe(path), progress=progress)
