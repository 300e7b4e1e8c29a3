"""The hidden folders a run keeps beside its destination (`.NAME.KIND-PID-RANDOM`: its staging folder, a
previous output moved aside), named for the process that made them, and the clearing of those a killed
run left behind."""

from __future__ import annotations

import glob
import os
import secrets
import shutil
from pathlib import Path

from prunefx.graph.whole_files import process_running


def sibling(destination: Path, kind: str) -> Path:
    """A hidden name beside `destination` that says whose it is: `.NAME.KIND-PID-RANDOM`."""
    destination = Path(os.path.abspath(destination))
    return destination.parent / f".{destination.name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}"


def clear_stale(destination: Path) -> None:
    """Remove the staging folders of runs that were killed (their process is gone) beside `destination`,
    and put back a previous output a killed run had moved aside but not yet replaced."""
    destination = Path(os.path.abspath(destination))
    folder = destination.parent
    if not folder.is_dir():
        return
    for kind in ("partial", "old"):
        for stale in sorted(folder.glob(f".{glob.escape(destination.name)}.{kind}-*")):
            if _owner_alive(stale.name):
                continue
            if kind == "old" and not destination.exists() and not destination.is_symlink():
                os.rename(stale, destination)  # killed between the two renames: the previous output returns
            else:
                shutil.rmtree(stale, ignore_errors=True)


def _owner_alive(name: str) -> bool:
    """Whether the process that made `.NAME.KIND-PID-RANDOM` still runs (a name without a pid: no)."""
    try:
        pid = int(name.rsplit("-", 2)[-2])
    except (ValueError, IndexError):
        return False
    return pid == os.getpid() or process_running(pid)
