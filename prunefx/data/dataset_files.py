"""The one way to open a file or folder that a user's data set names (label files, class lists, palettes,
annotation JSON, data yaml, image and mask folders): a data set is what lies inside its folder.

- `confined(path, root, what)`: `path` if, links followed, it lies inside `root`; else one line saying it
  leads out, and nothing of it is read. A linked folder leading out is refused the same way.
- `read_data_file(path, root, what, max_bytes)`: a confined regular file (no FIFO, device or folder), read
  once within `max_bytes`.
- `read_text(...)`: the same, decoded as UTF-8 (a file that is not is one line, not a traceback).
- `load_yaml(data, path)`: plain YAML with yaml's safe loader and no aliases: a few hundred bytes of
  nested aliases expand into gigabytes, and a data yaml has no need for them (recipes are read the same way).
- `load_json(data, path)`: JSON within a bound on the number of objects and lists it may build (checked
  before anything is built) and on its nesting depth (the interpreter's recursion limit, reported in one line).
- `quoted(text)`, `shown(value)`: a piece of a file's text, or a value read from it, for an error line:
  escaped and cut to QUOTE_CHARS.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import yaml

from prunefx.graph.errors import PrunefxError, first_line, printable
from prunefx.graph.safety.regular_files import read_regular_file
from prunefx.graph.safety.yaml_loader import no_alias_loader

MAX_TEXT_BYTES = 16 << 20          # a data yaml, a class list, a palette, one image's labels
MAX_JSON_BYTES = 1 << 30           # COCO 2017's train annotations are 448 MB
# Objects and lists a JSON file may hold: COCO 2017's train file has about 3.7 million (an annotation is a
# dict with a box list and polygon lists); 10 million empty `{}` would take gigabytes of Python dicts.
MAX_JSON_CONTAINERS = 10_000_000
QUOTE_CHARS = 80


def quoted(text: str) -> str:
    """`text` escaped (never obeyed by a terminal) and cut to QUOTE_CHARS, quoted, for one error line."""
    shown = printable(text.strip())
    return repr(shown if len(shown) <= QUOTE_CHARS else shown[:QUOTE_CHARS] + "...")


def shown(value) -> str:
    """A value read from a file (a number, a list, a string), as Python writes it, escaped and cut to
    QUOTE_CHARS, for one error line."""
    text = printable(repr(value))
    return text if len(text) <= QUOTE_CHARS else text[:QUOTE_CHARS] + "..."


def _inside(path: Path, root: Path) -> bool:
    real, top = os.path.realpath(path), os.path.realpath(root)
    return os.path.commonpath([real, top]) == top


def confined(path: str | Path, root: str | Path, what: str) -> Path:
    """`path` if it (links followed) lies inside `root`; else one PrunefxError line that reads nothing of it."""
    path = Path(path)
    if not _inside(path, Path(root)):
        raise PrunefxError(f"{what} {printable(str(path))} is a link that leads out of the data folder "
                           f"{printable(str(root))} (refused: a data set is what lies inside its folder)")
    return path


def read_data_file(path: str | Path, root: str | Path | None, what: str, max_bytes: int = MAX_TEXT_BYTES) -> bytes:
    """The bytes of the data set's regular file `path`, which must lie inside `root` (see `confined`); `root`
    None for a file the user named on the command line, read wherever it is."""
    return read_regular_file(path if root is None else confined(path, root, what), what, max_bytes)


def read_text(path: str | Path, root: str | Path | None, what: str, max_bytes: int = MAX_TEXT_BYTES) -> str:
    """`read_data_file` decoded as UTF-8."""
    data = read_data_file(path, root, what, max_bytes)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise PrunefxError(f"{what} {printable(str(path))} is not UTF-8 text (byte {error.start})") from None


_DataLoader = no_alias_loader("a data set's yaml")


def load_yaml(data: bytes, path: str | Path, what: str):
    """The YAML document in `data` (see the module docstring); a bad one is one line naming `path`."""
    try:
        return yaml.load(data, Loader=_DataLoader)  # noqa: S506 - a SafeLoader subclass
    except (yaml.YAMLError, RecursionError, UnicodeDecodeError) as error:
        reason = "nested too deep" if isinstance(error, RecursionError) else first_line(error)
        raise PrunefxError(f"cannot read {what} {printable(str(path))}: {reason}") from None


def load_json(data: bytes, path: str | Path, what: str):
    """The JSON document in `data`, refused in one line when it would build more than MAX_JSON_CONTAINERS
    objects and lists (brackets inside strings count too: an over-estimate, never an under-estimate) or
    nest deeper than the JSON parser's recursion limit."""
    containers = data.count(b"{") + data.count(b"[")
    if containers > MAX_JSON_CONTAINERS:
        raise PrunefxError(f"{what} {printable(str(path))} holds {containers:,} objects and lists, more than "
                           f"the limit of {MAX_JSON_CONTAINERS:,}")
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as error:
        reason = "nested too deep" if isinstance(error, RecursionError) else first_line(error)
        raise PrunefxError(f"cannot read {what} {printable(str(path))}: {reason}") from None
