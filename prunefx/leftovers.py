"""The hidden folders a run keeps beside its destination (`.NAME.KIND-HOST-PID-RANDOM`: its staging folder, a
previous output moved aside), named for the process that made them, and the clearing of those a killed
run left behind (on a folder shared between hosts, another host's only once a day old: graph/whole_files.py)."""

from __future__ import annotations

import glob
import os
import re
import secrets
import shutil
from pathlib import Path

from prunefx.graph.whole_files import WRITER, hidden_stem, writer_gone, writer_tag


def sibling(destination: Path, kind: str) -> Path:
    """A hidden name beside `destination` that says whose it is: `.NAME.KIND-HOST-PID-RANDOM`."""
    destination = Path(os.path.abspath(destination))
    return destination.parent / f".{hidden_stem(destination)}.{kind}-{writer_tag()}-{secrets.token_hex(4)}"


def clear_stale(destination: Path) -> None:
    """Remove the staging folders of runs that were killed (their process is gone) beside `destination`,
    and put back a previous output a killed run had moved aside but not yet replaced."""
    destination = Path(os.path.abspath(destination))
    folder = destination.parent
    if not folder.is_dir():
        return
    for kind in ("partial", "old"):
        prefix = f".{hidden_stem(destination)}.{kind}-"
        for stale in sorted(folder.glob(f"{glob.escape(prefix)}*")):
            if _owner_alive(stale, stale.name[len(prefix):]):
                continue
            if kind == "old" and not destination.exists() and not destination.is_symlink():
                os.rename(stale, destination)  # killed between the two renames: the previous output returns
            else:
                shutil.rmtree(stale, ignore_errors=True)


def _owner_alive(stale: Path, tag: str) -> bool:
    """Whether the writer that made `stale`, named `...-TAG` (HOST-PID-RANDOM, or PID-RANDOM from before hosts),
    may still be writing it (a name without a pid: no)."""
    found = re.fullmatch(WRITER + r"-[0-9a-f]{8}", tag)
    return found is not None and not writer_gone(found.group(1), int(found.group(2)), stale)
