"""Reference pages made from the code itself, so they cannot drift from it: every CLI command from the
argparse definitions (prunefx.cli.build_parser), every pass and its config fields from the config
classes (prunefx.passes.PASSES), the API reference directives from each package's __all__, and the
shipped recipes from the headers of prunefx/recipes/*.yaml.

Used by scripts/docs_hooks.py while `mkdocs build` runs, and by tests/test_docs.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import inspect
from pathlib import Path

API_MODULES = ("prunefx", "prunefx.passes", "prunefx.runtime")
RECIPES = Path(__file__).resolve().parents[1] / "prunefx" / "recipes"


def _cell(text) -> str:
    """Text safe inside one Markdown table cell."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _code(text) -> str:
    return f"`{_cell(text)}`" if text not in (None, "") else ""


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:  # argparse has no public accessor for sub-parsers
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _argument_row(action: argparse.Action) -> list[str]:
    if action.option_strings:
        takes_value = action.nargs != 0
        metavar = action.metavar or (action.dest.upper() if takes_value else "")
        name = ", ".join(action.option_strings) + (f" {metavar}" if takes_value and not action.choices else "")
    else:
        name = action.metavar or action.dest
    choices = ", ".join(str(choice) for choice in action.choices) if action.choices else ""
    default = action.default if action.default not in (None, argparse.SUPPRESS, False) else ""
    text = (action.help or "") % {**vars(action), "default": action.default, "prog": "prunefx"}
    return [_code(name), _code(choices), _code(default) if default != "" else "", _cell(text)]


def cli_reference() -> str:
    """One section per `prunefx` command: what it does, its usage line and a table of its arguments."""
    from prunefx.cli import build_parser

    parser = build_parser()
    lines = []
    for name, sub in _subcommands(parser).items():
        usage = " ".join(sub.format_usage().split()).removeprefix("usage: ")
        lines += [f"## prunefx {name}", "", sub.description or "", "", "```text", usage, "```", "",
                  "| argument | choices | default | what it does |", "|---|---|---|---|"]
        lines += ["| " + " | ".join(_argument_row(action)) + " |" for action in sub._actions
                  if action.help != argparse.SUPPRESS and not isinstance(action, argparse._HelpAction)]
        lines.append("")
    return "\n".join(lines)


def _type_text(config_class, field: dataclasses.Field) -> str:
    from prunefx.passes.core.pass_config import _type_name  # the wording the config errors use

    hints = __import__("typing").get_type_hints(config_class)
    return field.metadata.get("describe") or _type_name(hints[field.name])


def _default_text(field: dataclasses.Field) -> str:
    if field.default is not dataclasses.MISSING:
        return repr(field.default)
    if field.default_factory is not dataclasses.MISSING:
        return repr(field.default_factory())
    return "required"


def _bounds_text(field: dataclasses.Field) -> str:
    choices, bounds = field.metadata.get("choices"), field.metadata.get("bounds")
    if choices:
        return ", ".join(str(choice) for choice in choices)
    if bounds:
        low, high, low_open, high_open = bounds
        left = "-inf" if low is None else f"{low}"
        right = "inf" if high is None else f"{high}"
        return f"{'(' if low_open or low is None else '['}{left}, {right}{')' if high_open or high is None else ']'}"
    return ""


def _summary(function) -> str:
    """The first paragraph of the pass's module docstring (where a pass documents what it rewrites)."""
    text = inspect.getdoc(inspect.getmodule(function)) or inspect.getdoc(function) or ""
    return text.split("\n\n")[0].strip()


def pass_reference() -> str:
    """One section per registered pass: what it rewrites and a table of its config fields; the fields a
    caller injects (data, teacher, measuring function) in their own table."""
    from prunefx.passes import PASSES
    from prunefx.passes.core.pass_config import SOURCES

    lines = []
    for name, function in sorted(PASSES.items()):
        config_class = getattr(function, "config_class", None)
        lines += [f"## {name}", "", _summary(function), ""]
        if config_class is None:
            lines += ["This pass takes no options.", ""]
            continue
        fields = dataclasses.fields(config_class)
        options = [f for f in fields if not f.metadata.get("source")]
        injected = [f for f in fields if f.metadata.get("source")]
        if options:
            lines += ["| option | type | default | allowed | what it does |", "|---|---|---|---|---|"]
            lines += [f"| `{f.name}` | {_cell(_type_text(config_class, f))} | {_code(_default_text(f))} | "
                      f"{_cell(_bounds_text(f))} | {_cell(f.metadata.get('help', ''))} |" for f in options]
            lines.append("")
        if injected:
            lines += ["Given by the caller (`prunefx compress` and the CLI inject these when the configuration "
                      "reads them):", "", "| input | what it is | what it does |", "|---|---|---|"]
            lines += [f"| `{f.name}` | {_cell(SOURCES[f.metadata['source']])} | {_cell(f.metadata.get('help', ''))} |"
                      for f in injected]
            lines.append("")
    return "\n".join(lines)


def public_names(module_name: str) -> list[str]:
    return sorted(importlib.import_module(module_name).__all__)


def defining_path(module_name: str, name: str) -> str:
    """Where the public name MODULE.NAME is defined (functions and classes are re-exported, some lazily,
    which static analysis cannot follow); data and anything else stays MODULE.NAME."""
    value = getattr(importlib.import_module(module_name), name)
    qualname, home = getattr(value, "__qualname__", None), getattr(value, "__module__", None)
    if (inspect.isfunction(value) or inspect.isclass(value) or inspect.ismethod(value)) and home and qualname:
        return f"{home}.{qualname}".replace(".<locals>", "")
    lazy = getattr(importlib.import_module(module_name), "_LAZY", {}).get(name)  # data a package imports lazily
    if isinstance(lazy, tuple):  # prunefx's: (module, attribute path)
        return f"{lazy[0]}.{lazy[1] or name}"
    if isinstance(lazy, str):  # prunefx.graph's (module) and prunefx.runtime's (module under the package)
        return f"{lazy if lazy.startswith('prunefx.') else f'{module_name}.{lazy}'}.{name}"
    return f"{module_name}.{name}"


def api_reference(module_name: str) -> str:
    """A mkdocstrings directive for every public name of the module (its __all__); a sub-package gets a
    link to its own page."""
    module = importlib.import_module(module_name)
    lines = []
    for name in public_names(module_name):
        heading = f"## {module_name}.{name}"
        if inspect.ismodule(getattr(module, name)):
            lines += [heading, "", f"The `{module_name}.{name}` package has its own page in this reference.", ""]
            continue
        lines += [heading, "", f"::: {defining_path(module_name, name)}", "    options:",
                  "      show_root_heading: true", "      show_root_toc_entry: false", ""]
    return "\n".join(lines)


def _first_comment_paragraph(text: str) -> list[str]:
    """The lines of a file's leading comment up to its first blank comment line (`#` alone) or its end."""
    lines = []
    for line in text.splitlines():
        if not line.startswith("#") or not line.lstrip("#").strip():
            break
        lines.append(line.lstrip("#").strip())
    return lines


def recipes_table() -> str:
    """The shipped recipes, each with the summary at the top of its file: its first comment paragraph, which may
    run over several lines."""
    rows = ["| recipe | what it does |", "|---|---|"]
    for path in sorted(RECIPES.glob("*.yaml")):
        first = " ".join(_first_comment_paragraph(path.read_text()))
        summary = first.split("—", 1)[-1].strip() if "—" in first else first
        rows.append(f"| `{path.stem}` | {_cell(summary)} |")
    return "\n".join(rows)
