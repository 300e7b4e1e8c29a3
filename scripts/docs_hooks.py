"""MkDocs hook (mkdocs.yml `hooks:`): replaces the generation markers in the docs' Markdown with pages
made from the code and the results files while the site builds, so the reference cannot drift.

Markers, each alone on a line:
    <!-- prunefx:cli -->                every CLI command (argparse)
    <!-- prunefx:passes -->             every registered pass and its config fields
    <!-- prunefx:recipes -->            the shipped recipes
    <!-- prunefx:api MODULE -->         mkdocstrings directives for MODULE.__all__
    <!-- prunefx:results NAME -->       the tables of benchmarks/results/NAME.json
    <!-- prunefx:unclaimed -->          every results file that no benchmark page names
"""

from __future__ import annotations

import re
from pathlib import Path

import docs_reference  # beside this file: MkDocs puts the hook's folder on sys.path while loading it
import docs_results
import package_tree
from mkdocs.exceptions import PluginError

# mkdocstrings reads the package from this tree (mkdocs.yml: paths), made before any page renders.
API_SOURCES = package_tree.mirror_sources(Path(__file__).resolve().parents[1] / "build" / "docs_api")
BENCHMARK_PAGES = Path(__file__).resolve().parents[1] / "docs" / "benchmarks"
MARKER = re.compile(r"^<!-- prunefx:(\w+)(?: ([\w.]+))? -->$", re.MULTILINE)


def expand(kind: str, argument: str | None) -> str:
    if kind == "cli":
        return docs_reference.cli_reference()
    if kind == "passes":
        return docs_reference.pass_reference()
    if kind == "recipes":
        return docs_reference.recipes_table()
    if kind == "api" and argument:
        return docs_reference.api_reference(argument)
    if kind == "results" and argument:
        return docs_results.results_markdown(argument)
    if kind == "unclaimed":
        return docs_results.unclaimed_markdown(BENCHMARK_PAGES)
    raise ValueError(f"unknown docs marker prunefx:{kind} {argument or ''}")


def expand_markers(markdown: str) -> str:
    return MARKER.sub(lambda match: expand(match.group(1), match.group(2)), markdown)


def on_page_markdown(markdown, page, config, files):
    # A PluginError is a BuildError: MkDocs prints its one line and exits 1, where any other exception
    # would end the build in a traceback that names neither the page nor the marker.
    try:
        return expand_markers(markdown)
    except (OSError, ValueError) as error:
        raise PluginError(f"docs/{page.file.src_uri}: {error}") from None
