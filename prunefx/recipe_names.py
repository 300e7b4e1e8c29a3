"""The recipes prunefx ships (prunefx/recipes/*.yaml), by name: torch-free, so that `prunefx compress --help`
lists them without importing the passes that read them (named_recipes.py)."""

from __future__ import annotations

from pathlib import Path

RECIPES_DIR = Path(__file__).resolve().parent / "recipes"


def shipped_recipes() -> list[str]:
    return sorted(path.stem for path in RECIPES_DIR.glob("*.yaml"))
