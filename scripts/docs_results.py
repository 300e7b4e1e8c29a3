"""Benchmark tables made from benchmarks/results/NAME.json while the docs build, never retyped.

Every results file has its own shape, so the rendering is generic: the command and the machine first,
then one table for each list of records (one row per record) and for each mapping of records (one row
per key, as `models: {resnet50: {...}}`), their nested records in tables of their own, headed by
their path in the file. Numbers are shown to four significant figures.
"""

from __future__ import annotations

import importlib
import json
import re
import sys
import textwrap
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
if str(Path(__file__).parent) not in sys.path:  # docs_tables beside this file, however this one was loaded
    sys.path.insert(0, str(Path(__file__).parent))
# Imported now: MkDocs puts the hooks' folder on sys.path only while it loads them.
TABLES = importlib.import_module("docs_tables")
MAX_DEPTH = 4
MAX_COLUMNS = 24
MIN_KEYED = 3


def result_names() -> list[str]:
    return sorted(path.stem for path in RESULTS.glob("*.json"))


def claimed_names(pages: Path) -> set[str]:
    """The results files that the benchmark pages under `pages` show by name (their markers)."""
    text = "\n".join(path.read_text() for path in pages.glob("*.md"))
    return set(re.findall(r"<!-- prunefx:results (\w+) -->", text))


def unclaimed_markdown(pages: Path) -> str:
    """A section for every results file no benchmark page shows yet, so a new benchmark's results are on
    the site from its first commit, until its own page is written."""
    names = [name for name in result_names() if name not in claimed_names(pages)]
    if not names:
        return "Every results file has its own page."
    sections = []
    for name in names:
        script = RESULTS.parent / f"{name}.py"
        source = f"`benchmarks/{script.name}`" if script.is_file() else "its script in `benchmarks/`"
        sections += [f"## {name}", "", f"Written by {source}; its own results file is shown as measured.", "",
                     results_markdown(name), ""]
    return "\n".join(sections)


def _scalar(value) -> bool:
    return value is None or isinstance(value, (str, int, float, bool)) or (
        isinstance(value, list) and len(value) <= 6 and all(isinstance(v, (str, int, float, bool)) for v in value))


def _shown(value) -> str:
    if isinstance(value, bool) or value is None:
        return {True: "yes", False: "no", None: ""}[value]
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return ", ".join(_shown(v) for v in value)
    return " ".join(str(value).split()).replace("|", "\\|")


def _flat(record: dict, prefix: str = "", depth: int = 0) -> dict:
    """The record's scalar fields, nested mappings spelled as dotted keys (`latency.dense.median_ms`)."""
    flat = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if _scalar(value):
            flat[name] = value
        elif isinstance(value, dict) and not _is_records(value) and depth < MAX_DEPTH:
            flat.update(_flat(value, f"{name}.", depth + 1))
    return flat


def _nested_lists(record: dict, prefix: str = "", depth: int = 0):
    """(dotted path, records) for every table of records inside the record."""
    for key, value in record.items():
        if _is_records(value):
            yield f"{prefix}{key}", value
        elif isinstance(value, dict) and depth < MAX_DEPTH:
            yield from _nested_lists(value, f"{prefix}{key}.", depth + 1)


def _records_table(rows: list[tuple[str | None, dict]]) -> str:
    """A table of records (key or None, record): one column per scalar field they have."""
    flat = [(key, _flat(record)) for key, record in rows]
    columns: list[str] = []
    for _, record in flat:
        columns += [k for k in record if k not in columns]
    columns = columns[:MAX_COLUMNS]
    keyed = any(key is not None for key, _ in flat)
    header = (["name"] if keyed else []) + columns
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for key, record in flat:
        cells = ([_shown(key)] if keyed else []) + [_shown(record.get(column)) for column in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _is_records(value) -> bool:
    """A list of mappings, or a mapping of at least MIN_KEYED mappings (`models: {name: {...}}`); two or
    fewer (`latency: {dense: {...}, pruned: {...}}`) read better as dotted columns of their parent."""
    if isinstance(value, list):
        return bool(value) and all(isinstance(v, dict) for v in value)
    return (isinstance(value, dict) and len(value) >= MIN_KEYED
            and all(isinstance(v, dict) for v in value.values()))


def _tables(value, path: str, depth: int, out: list[str]) -> None:
    """Tables for `value` at `path`: a list or mapping of records is one table (its nested lists of
    records get tables of their own); a plain mapping is walked key by key."""
    if depth > MAX_DEPTH:
        return
    if _is_records(value):
        rows = [(None, v) for v in value] if isinstance(value, list) else list(value.items())
        out += [f"**{path}**", "", _records_table(rows), ""]
        for key, record in rows:
            label = key if key is not None else record.get("model") or record.get("variant") or ""
            for inner_path, records in _nested_lists(record):
                _tables(records, f"{path} {_shown(label)}: {inner_path}", depth + 1, out)
    elif isinstance(value, dict):
        scalars = {k: v for k, v in value.items() if _scalar(v)}
        if scalars and depth > 0:
            out += [f"**{path}**", "", _records_table([(None, scalars)]), ""]
        for key, inner in value.items():
            if not _scalar(inner) and key not in ("machine", "provenance"):  # provenance: the raw line above
                _tables(inner, f"{path}.{key}" if path else key, depth + 1, out)


def _machine_line(machine: dict) -> str:
    versions = machine.get("versions", {})
    isa = "AVX-512" if machine.get("avx512") else "AVX2" if machine.get("avx2") else "no AVX2"
    software = ", ".join(f"{name} {version}" for name, version in versions.items() if version)
    return (f"{machine.get('cpu', '?')} ({isa}, {machine.get('usable_cpus', '?')} usable of "
            f"{machine.get('logical_cpus', '?')} logical CPUs), Python {machine.get('python', '?')}; {software}")


def script_of(name: str) -> Path | None:
    """The benchmark that wrote NAME.json: benchmarks/NAME.py, or the longest SCRIPT with NAME = SCRIPT_..."""
    scripts = sorted(RESULTS.parent.glob("*.py"), key=lambda path: len(path.stem), reverse=True)
    return next((path for path in scripts if name == path.stem or name.startswith(path.stem + "_")), None)


def script_markdown(name: str, data: dict) -> str | None:
    """The results as the benchmark script itself renders them (its `markdown(report)`), headings moved
    under the page's; None when the script has no renderer or it cannot read this (older) file. The
    renderers of docs_tables come first: they read the results files their scripts' renderers cannot."""
    own = TABLES.renderer_of(name)
    if own is not None:
        try:
            return own(data)
        except (KeyError, TypeError, IndexError):  # a shape it does not know: the script's, then generic tables
            pass
    script = script_of(name)
    if script is None:
        return None
    if str(script.parent) not in sys.path:  # the scripts import their sibling `common`
        sys.path.insert(0, str(script.parent))
    try:
        render = getattr(importlib.import_module(script.stem), "markdown", None)
        text = render(data) if render is not None else None
    except Exception:  # an older results file than the renderer reads: the generic tables still show it
        return None
    return re.sub(r"^(#+) ", r"##\1 ", text, flags=re.MULTILINE) if text else None


def results_markdown(name: str) -> str:
    """benchmarks/results/NAME.json as Markdown: as its script renders it where it can, and every field
    of the file in generic tables, collapsed."""
    path = RESULTS / f"{name}.json"
    if not path.is_file():
        raise ValueError(f"the marker <!-- prunefx:results {name} --> names benchmarks/results/{name}.json, "
                         f"which does not exist")
    try:
        data = json.loads(path.read_text())
    except ValueError as error:
        raise ValueError(f"benchmarks/results/{name}.json is not JSON: {error}") from None
    rendered = script_markdown(name, data)
    raw = raw_markdown(name, data)
    return f"{rendered}\n\n{raw}" if rendered else raw


def raw_markdown(name: str, data: dict) -> str:
    """The command, machine and every field of the results file, in tables (collapsed)."""
    lines: list[str] = []
    command = data.get("command") or data.get("provenance", {}).get("command")
    if command:
        lines += ["Command:", "", "```sh", str(command), "```", ""]
    if isinstance(data.get("machine"), dict):
        lines += [f"Machine: {_machine_line(data['machine'])}.", ""]
    tables: list[str] = []
    _tables(data, "", 0, tables)
    # Collapsed: the page's own text quotes what matters; the full data stays one click away.
    body = "\n".join(lines + tables)
    return f'??? info "Results file `benchmarks/results/{name}.json`"\n\n' + textwrap.indent(body, "    ")
