"""Recipes by name or path: the YAML files shipped in prunefx/recipes/ (`--recipe NAME`), or any file, read
and checked (every pass must exist) before anything expensive runs; `with_budget` sets the command line's
--speedup / --latency-ms on a recipe's budget passes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from prunefx.graph.errors import PrunefxError
from prunefx.graph.safety.regular_files import require_regular_file
from prunefx.passes.core.pipeline import Pipeline
from prunefx.passes.core.recipe import RecipeError, pipeline_from_spec, read_recipe
from prunefx.recipe_names import RECIPES_DIR, shipped_recipes


@dataclass(frozen=True)
class Recipe:
    name: str
    path: Path
    spec: dict
    pipeline: Pipeline


def recipe_path(text: str) -> Path:
    """A shipped recipe's file for NAME (or NAME.yaml); otherwise `text` as a path. A bare name that is both
    (an edited copy of a shipped recipe in the current folder) is refused: neither choice would be safe to guess."""
    name = text.removesuffix(".yaml")
    shipped = RECIPES_DIR / f"{name}.yaml"
    path = Path(text).expanduser()
    if "/" not in text and os.sep not in text and shipped.is_file():
        if path.is_file() and not path.samefile(shipped):
            other = name if text != name else f"{name}.yaml"
            for_shipped = "" if Path(other).exists() else f", {other} for the shipped one"
            raise RecipeError(f"recipe {text} names both the shipped recipe {name} and the file ./{text}: "
                              f"write ./{text} for your file{for_shipped}")
        return shipped
    if path.exists():  # a FIFO, a device or a folder is said to be one, not "no such file"
        try:
            return require_regular_file(path, "recipe")
        except PrunefxError as error:
            raise RecipeError(str(error)) from None
    raise RecipeError(f"unknown recipe {text!r}: no such file, and not a shipped recipe "
                      f"(shipped: {', '.join(shipped_recipes())})")


def load_named_recipe(text: str) -> Recipe:
    """Read and check a recipe (its passes must exist) before anything expensive runs."""
    path = recipe_path(text)
    spec = read_recipe(path)
    try:
        pipeline = pipeline_from_spec(spec, name=path.stem)
    except PrunefxError as error:
        raise RecipeError(f"recipe {path}: {error}") from error
    return Recipe(name=pipeline.__name__, path=path, spec=spec, pipeline=pipeline)


BUDGET_PASSES = ("choose_for_budget", "prune_to_budget", "depth_to_budget")


def with_budget(recipe: Recipe, *, speedup: float | None = None, latency_ms: float | None = None) -> Recipe:
    """`recipe` with its budget passes' budget set to `speedup` or `latency_ms` (the command line's
    --speedup/--latency-ms); the spec in the report says what ran. A recipe with no budget pass is an error:
    a budget it would ignore is worse than none."""
    budget = {"speedup": speedup, "latency_ms": latency_ms}
    entries, found = [], False
    for entry in recipe.spec["passes"]:
        name, config = (entry, {}) if isinstance(entry, str) else next(iter(entry.items()))
        if name in BUDGET_PASSES:
            found = True
            entry = {name: {**(config or {}), **budget}}
        entries.append(entry)
    if not found:
        raise RecipeError(f"recipe {recipe.name} has no budget pass ({', '.join(BUDGET_PASSES)}) for --speedup or "
                          "--latency-ms; use --recipe budget-kd or add one")
    spec = {**recipe.spec, "passes": entries}
    return Recipe(name=recipe.name, path=recipe.path, spec=spec, pipeline=pipeline_from_spec(spec, name=recipe.name))
