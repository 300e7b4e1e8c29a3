"""Recipes: YAML files that spell a Pipeline declaratively.

    name: fold-only            # optional
    verify: full               # full | shapes | none (default full)
    passes:
      - fold_batchnorm         # a pass with its default config
      - fold_batchnorm: {}     # or with a config mapping

The CLI and the Python API build the same Pipeline from this. A recipe may come from anyone, so
reading it is bounded: at most 1 MiB, plain YAML only (no `!!python` or other tags: yaml's safe
loader), and no aliases (`*ref`): a few hundred bytes of nested aliases expand into gigabytes
("billion laughs"), and a recipe has no need for them. Unknown top-level keys are refused, and every
step's config is checked when the Pipeline is built, before any pass runs (Pipeline.check_configs).
"""

from __future__ import annotations

from pathlib import Path

import yaml

from prunefx.graph.errors import PrunefxError, first_line, printable
from prunefx.graph.safety.regular_files import read_regular_file, require_regular_file
from prunefx.graph.safety.yaml_loader import no_alias_loader
from prunefx.passes.core.pipeline import Pipeline, Step
from prunefx.passes.core.registry import get_pass

MAX_RECIPE_BYTES = 1 << 20
# Every step is verified in full after it runs: a recipe listing fold_batchnorm 40,000 times is hours of
# verification, not a recipe. The longest shipped recipe has a handful of steps.
MAX_RECIPE_STEPS = 100
TOP_LEVEL_KEYS = ("name", "verify", "passes")


class RecipeError(PrunefxError):
    pass


_RecipeLoader = no_alias_loader("a recipe")


def _step(entry, index: int) -> Step:
    if isinstance(entry, str):
        return Step(_named_pass(entry, index), {})
    if isinstance(entry, dict) and len(entry) == 1:
        (name, config), = entry.items()
        config = {} if config is None else config
        if not isinstance(config, dict):
            raise RecipeError(f"step {index + 1} ('{printable(str(name))[:60]}'): its config must be a mapping, "
                              f"not {type(config).__name__}")
        return Step(_named_pass(name, index), config)
    raise RecipeError(f"step {index + 1}: expected a pass name or a one-key mapping 'name: {{config}}', "
                      f"got {printable(repr(entry))[:80]}")


def _named_pass(name, index: int):
    """The registered pass `name`; an unknown name is shown escaped (a recipe's text is never obeyed
    by the terminal it is printed to)."""
    if not isinstance(name, str):
        raise RecipeError(f"step {index + 1}: a pass name must be text, not {type(name).__name__}")
    try:
        return get_pass(name)
    except PrunefxError as error:
        raise RecipeError(f"step {index + 1}: {printable(str(error))[:300]}") from None


def pipeline_from_spec(spec: dict, *, progress: bool = False, name: str = "pipeline") -> Pipeline:
    """The Pipeline a recipe's mapping describes, every step's config checked; `name` where it names none."""
    if not isinstance(spec, dict) or not isinstance(spec.get("passes"), list):
        raise RecipeError("a recipe is a mapping with a 'passes' list")
    unknown = [str(key) for key in spec if key not in TOP_LEVEL_KEYS]
    if unknown:
        raise RecipeError(f"unknown top-level key '{printable(unknown[0])[:60]}' "
                          f"(a recipe has: {', '.join(TOP_LEVEL_KEYS)})")
    if "name" in spec and not isinstance(spec["name"], str):
        raise RecipeError("'name' must be text")
    if len(spec["passes"]) > MAX_RECIPE_STEPS:
        raise RecipeError(f"a recipe has {len(spec['passes'])} steps, over the limit of {MAX_RECIPE_STEPS}")
    steps = [_step(entry, index) for index, entry in enumerate(spec["passes"])]
    return Pipeline(steps, verify=spec.get("verify", "full"), progress=progress, name=spec.get("name", name))


def read_recipe(path: str | Path) -> dict:
    """The recipe file's mapping, as written (not yet checked: `pipeline_from_spec` does that)."""
    path = Path(path)
    if not path.exists():
        raise RecipeError(f"no such recipe file: {path}")
    try:
        if require_regular_file(path, "recipe").stat().st_size > MAX_RECIPE_BYTES:
            raise RecipeError(f"recipe {path} is over {MAX_RECIPE_BYTES >> 20} MiB; a recipe is a short YAML file")
        data = read_regular_file(path, "recipe", MAX_RECIPE_BYTES)
    except RecipeError:
        raise
    except PrunefxError as error:
        raise RecipeError(str(error)) from None
    try:
        return yaml.load(data.decode(), Loader=_RecipeLoader)  # noqa: S506 - a SafeLoader subclass
    except UnicodeDecodeError as error:
        raise RecipeError(f"recipe {path} is not UTF-8 text") from error
    except (yaml.YAMLError, RecursionError) as error:
        raise RecipeError(f"recipe {path} is not valid YAML: {first_line(error)}") from error


def load_recipe(path: str | Path, *, progress: bool = False) -> Pipeline:
    """The recipe file at `path` as a Pipeline, named by its `name` or, as on the command line, its file's stem."""
    return pipeline_from_spec(read_recipe(path), progress=progress, name=Path(path).stem)
